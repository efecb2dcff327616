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


ENV_KEYS = ("HETA_FAST_MALLOC_TUNING", "HETA_FAST_MALLOC_HEAP_ONLY")


def run(env_value: str | None, heap_only: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    if env_value is not None:
        env["HETA_FAST_MALLOC_TUNING"] = env_value
    if heap_only:
        env["HETA_FAST_MALLOC_HEAP_ONLY"] = "1"
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


@glibc
def test_heap_only_is_opt_in():
    assert "after: applied (heap only: no mmap)" in run(None, heap_only=True)


@glibc
def test_heap_only_serves_blocks_above_the_mmap_cap_from_the_heap():
    """With HETA_FAST_MALLOC_HEAP_ONLY=1 a 64 MiB block is served from the heap (no new mapping: glibc's mmap
    threshold is capped at 32 MiB, so only M_MMAP_MAX 0 does this); with the default tuning it is a fresh
    mapping."""
    script = SCRIPT + """
import ctypes
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks  # mappings made before the tuning (at import) stay
block = libc.malloc(64 * 2**20)
print("new mapped blocks:", libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""
    for heap_only, mapped in ((True, "0"), (False, "1")):
        env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
        if heap_only:
            env["HETA_FAST_MALLOC_HEAP_ONLY"] = "1"
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        assert f"new mapped blocks: {mapped}" in out, (heap_only, out)


# ---------------------------------------------------------------------------------------------- huge pages
HUGE_ENV_KEYS = ENV_KEYS + ("THP_MEM_ALLOC_ENABLE",)
linux = pytest.mark.skipif(platform.system() != "Linux", reason="transparent huge pages are a Linux feature")


def huge_pages_run(script: str, **env_values: str) -> tuple[str, str]:
    """(THP_MEM_ALLOC_ENABLE as the script's process ends up with it, heta_fast's huge-page status) of ``script``
    run in a fresh interpreter, then heta_fast's report appended."""
    env = {k: v for k, v in os.environ.items() if k not in HUGE_ENV_KEYS}
    env.update(env_values)
    script += """
import os
from heta_fast import cpu_allocator
print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
print(cpu_allocator.huge_pages_status())
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    return out[-2], out[-1]


def kernel_mode() -> str | None:
    from heta_fast.cpu_allocator import kernel_huge_page_mode

    return kernel_huge_page_mode()


@linux
def test_import_turns_huge_pages_on_for_large_blocks():
    """``import heta_fast`` before torch allocates: torch advises its large blocks huge (the status reads the
    mapping's flags of a real 4 MiB tensor, so this fails if torch ignored the variable)."""
    value, status = huge_pages_run("import heta_fast")
    assert value == "1"
    if kernel_mode() == "never":
        assert status == "off: the kernel's transparent huge pages are 'never'"
    elif kernel_mode() == "madvise":
        assert status.startswith("on (THP_MEM_ALLOC_ENABLE=1 set by import heta_fast"), status
    elif kernel_mode() == "always":
        assert status.startswith("on ("), status
    else:  # the mode file is unreadable (a container without /sys): torch's advice took or the status says why not
        assert status.startswith("on (THP_MEM_ALLOC_ENABLE=1") or "unreadable" in status, status
    if kernel_mode() == "madvise":  # the user's own export is reported as such
        assert "from the environment" in huge_pages_run("import heta_fast", THP_MEM_ALLOC_ENABLE="1")[1]


@linux
@pytest.mark.parametrize("env_values, value, status", [
    ({"THP_MEM_ALLOC_ENABLE": "0"}, "0", "off: THP_MEM_ALLOC_ENABLE=0 in the environment"),  # the user's choice
    ({"HETA_FAST_MALLOC_TUNING": "0"}, "None", "off: disabled by HETA_FAST_MALLOC_TUNING=0"),  # the opt-out
])
def test_users_settings_stand(env_values, value, status):
    got_value, got_status = huge_pages_run("import heta_fast", **env_values)
    assert got_value == value
    if kernel_mode() == "madvise":
        assert got_status == status


@linux
def test_torch_allocating_first_is_reported_with_the_fix():
    """torch reads the variable once: where it allocated before heta_fast was imported, the status says so and
    names the remedy rather than claiming huge pages."""
    value, status = huge_pages_run("import torch\nx = torch.empty(4 * 2**20, dtype=torch.uint8)\nimport heta_fast")
    assert value == "1"
    if kernel_mode() == "madvise":
        assert status.startswith("off: torch allocated memory before heta_fast was imported"), status
        assert "export THP_MEM_ALLOC_ENABLE=1" in status
