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

Those mappings also cost a page fault per 4 KiB page. torch's CPU allocator asks the kernel for transparent huge
pages on blocks of 2 MiB and more when ``THP_MEM_ALLOC_ENABLE=1``, one fault per 2 MiB instead of 512 (a 47 MiB
product 8–15 ms instead of 23–27, a process's first S at 4,007 tokens 8 % faster and its peak memory 24 % lower
on an AMD EPYC: ``benchmarks/RESULTS.md``, *Huge pages for large blocks*). torch reads that variable once, at its
first CPU allocation, so ``import heta_fast`` sets it (:func:`request_huge_pages`) before it imports torch, unless
the variable is already set (the user's choice stands) or the tuning is off; :func:`huge_pages_status` says whether
it took.
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


def _tuning_disabled() -> bool:
    """The one opt-out of every setting here (malloc and huge pages): ``HETA_FAST_MALLOC_TUNING=0``."""
    return os.environ.get("HETA_FAST_MALLOC_TUNING", "1") == "0"


def tune_malloc_for_tensors() -> bool:
    """Apply the settings once per process; returns whether they are in effect.

    Idempotent and cheap, so every entry point may call it.
    """
    if _state["applied"]:
        return True
    if _tuning_disabled():
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


# ------------------------------------------------------------------------------------------- huge pages
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"  # torch's switch (c10's CPU allocator), read once per process
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

_huge_pages: dict = {"set_here": False}


def request_huge_pages() -> None:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` for torch unless the user set it or ``HETA_FAST_MALLOC_TUNING=0``.

    Called at ``import heta_fast`` before torch is imported: torch reads the variable at its first CPU
    allocation, so where torch has allocated already this changes nothing (:func:`huge_pages_status` says so).
    """
    if _tuning_disabled() or HUGE_PAGES_VARIABLE in os.environ:
        return
    os.environ[HUGE_PAGES_VARIABLE] = "1"
    _huge_pages["set_here"] = True


def kernel_huge_page_mode() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``); None where unreadable."""
    try:
        with open(_THP_MODE_FILE, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _vm_flags(address: int) -> list[str] | None:
    """The kernel's flags of the mapping that holds ``address`` (``/proc/self/smaps``); None if not found."""
    inside = False
    try:
        with open("/proc/self/smaps", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmFlags:"):
                    if inside:
                        return line.split()[1:]
                    continue
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    low, _, high = head.partition("-")
                    try:
                        inside = int(low, 16) <= address < int(high, 16)
                    except ValueError:
                        inside = False
    except OSError:
        return None
    return None


def huge_pages_status() -> str:
    """Whether torch's large CPU blocks get transparent huge pages in this process, and if not, why.

    Checked, not assumed: a 4 MiB tensor is allocated and its mapping's flags read (``hg``: advised huge).
    """
    if platform.system() != "Linux":
        return f"off: transparent huge pages are a Linux feature ({platform.system()})"
    mode = kernel_huge_page_mode()
    if mode == "never":
        return "off: the kernel's transparent huge pages are 'never'"
    import torch

    probe = torch.empty(4 * 2**20, dtype=torch.uint8)
    flags = _vm_flags(probe.data_ptr()) or []
    if "hg" in flags:
        by = "set by import heta_fast" if _huge_pages["set_here"] else "from the environment"
        return f"on ({HUGE_PAGES_VARIABLE}=1 {by}: torch advises blocks of 2 MiB and more; kernel mode {mode})"
    if mode == "always":
        return "on (the kernel's mode is 'always')"
    if mode is None:
        return f"off: the kernel's transparent huge page mode is unreadable ({_THP_MODE_FILE})"
    value = os.environ.get(HUGE_PAGES_VARIABLE)
    if _tuning_disabled() and not value:
        return "off: disabled by HETA_FAST_MALLOC_TUNING=0"
    if value is not None and value != "1":
        return f"off: {HUGE_PAGES_VARIABLE}={value} in the environment"
    return (f"off: torch allocated memory before heta_fast was imported (it reads {HUGE_PAGES_VARIABLE} once); "
            f"import heta_fast first or export {HUGE_PAGES_VARIABLE}=1")
