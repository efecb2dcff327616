"""Keep freed CPU memory in the process, so batched second backwards stop paying page faults.

A batched Hessian–vector product allocates and frees hundreds of multi-MiB temporaries per call. glibc's
malloc serves blocks above its mmap threshold with fresh ``mmap`` pages and trims freed heap memory back
to the kernel, so every temporary is page-faulted (and zeroed by the kernel) again on its next use. On
the default model at t = 64 that made exact S 1.16x and low-rank-64 S 1.04x slower than with the memory
kept (``benchmarks/RESULTS.md``). Raising the mmap threshold to its maximum and the trim threshold out of reach
keeps the blocks in the heap for reuse. The cost: memory freed after a large job stays in the process
(and is reused by the next one) instead of going back to the kernel.

glibc caps the mmap threshold at 32 MiB, and long inputs make larger temporaries (at 4,000 tokens the MLPs'
second backward multiplies ``[2, 4000, 1536]`` float32, 47 MiB): each is a fresh mapping, page-faulted on every
use (a 47 MiB product took 13 ms instead of 4). ``HETA_FAST_MALLOC_HEAP_ONLY=1`` switches mmap off altogether
(``M_MMAP_MAX`` 0), so those blocks come from the heap too. Not the default: at 8,192 tokens it made the first
attribution of a process 3 % faster (S 9 %) and a second one no faster, but raised the peak memory by 6–13 %
(``benchmarks/RESULTS.md``, *Large temporaries from the heap*).

Called by :class:`heta_fast.Attributor` for models on the CPU. Opt out with ``HETA_FAST_MALLOC_TUNING=0``;
a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB of free heap top is kept
TOP_PAD = 64 * 2**20  # grow the heap in 64 MiB steps instead of one page at a time

_state: dict = {"applied": False, "reason": "not requested yet"}


def tune_malloc_for_tensors() -> bool:
    """Apply the settings once per process; returns whether they are in effect.

    Idempotent and cheap, so every entry point may call it.
    """
    if _state["applied"]:
        return True
    if os.environ.get("HETA_FAST_MALLOC_TUNING", "1") == "0":
        _state["reason"] = "disabled by HETA_FAST_MALLOC_TUNING=0"
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state["reason"] = f"C library is not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown'})"
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as exc:  # pragma: no cover - glibc without the usual soname
        _state["reason"] = f"libc.so.6 not loadable: {exc}"
        return False
    settings = [(_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)]
    heap_only = os.environ.get("HETA_FAST_MALLOC_HEAP_ONLY", "0") == "1"
    if heap_only:
        settings.append((_M_MMAP_MAX, 0))  # blocks above the threshold's 32 MiB cap from the heap as well
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    _state["applied"] = ok
    _state["reason"] = ("applied" + (" (heap only: no mmap)" if heap_only else "")
                        if ok else "mallopt refused a setting")
    return ok


def malloc_tuning_status() -> str:
    """``"applied"`` or why not (for ``python -m heta_fast.env`` and bug reports)."""
    return _state["reason"]


def release_free_memory() -> None:
    """Give the free heap memory kept by these settings back to the kernel (``malloc_trim``).

    For long-lived processes after a large job, and for benchmarks, so resident memory measures what is
    in use rather than what was kept. A no-op where the C library is not glibc.
    """
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
