"""The glibc malloc tuning: applied by an Attributor on the CPU, off with HETA_FAST_MALLOC_TUNING=0.

mallopt settings are process-wide and cannot be read back, so each case runs in a fresh interpreter
and checks the module's own record of what happened; the speed effect is a benchmark
(benchmarks/bench_cpu_allocator.py), not a test.
"""

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc only")

SCRIPT = """
from heta_fast import Attributor, cpu_allocator
from heta_fast.testing import tiny_model
print("before:", cpu_allocator.malloc_tuning_status())
Attributor(tiny_model("llama"))
print("after:", cpu_allocator.malloc_tuning_status())
cpu_allocator.release_free_memory()
"""


def run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "HETA_FAST_MALLOC_TUNING"}
    if env_value is not None:
        env["HETA_FAST_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          check=True).stdout


@glibc
def test_attributor_on_cpu_applies_tuning():
    out = run(None)
    assert "before: not requested yet" in out
    assert "after: applied" in out


def test_opt_out_is_respected():
    out = run("0")
    assert "after: disabled by HETA_FAST_MALLOC_TUNING=0" in out
