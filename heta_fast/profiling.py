"""Where an attribution spends its time and memory: per-stage seconds, peak memory, optional torch trace.

    from heta_fast.profiling import profile_attribution
    prof = profile_attribution(attributor, "The capital of France is Paris", trace="trace.json")
    print(prof.summary())     # gate / hessian / kl / total seconds, peak RSS, CUDA peak
    # trace.json opens in chrome://tracing or https://ui.perfetto.dev

Peak memory on the CPU comes from the kernel's high-water mark of the process (``VmHWM`` in
``/proc/self/status``): tracemalloc does not see torch's allocator. The mark is reset before the run
(``/proc/self/clear_refs``, Linux ≥ 4.0) so the number is this run's peak, not the process's lifetime
peak; where the reset is not allowed, ``peak_rss_bytes`` is still the process peak and
``hwm_reset`` says so. On CUDA, ``torch.cuda.max_memory_allocated`` is reset and read as well.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field

import torch

_STATUS = "/proc/self/status"


def status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM) in KiB, or None off Linux."""
    try:
        with open(_STATUS) as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark to its current RSS (Linux ``clear_refs`` value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryWatch:
    """Filled in by :func:`track`: wall time and memory of the ``with`` block."""

    wall_s: float = 0.0
    rss_before_bytes: int | None = None
    peak_rss_bytes: int | None = None
    hwm_reset: bool = False
    cuda_peak_bytes: int | None = None

    @property
    def peak_delta_bytes(self) -> int | None:
        """Peak RSS during the block minus RSS at its start: what the block itself needed at most."""
        if self.peak_rss_bytes is None or self.rss_before_bytes is None:
            return None
        return self.peak_rss_bytes - self.rss_before_bytes


@contextlib.contextmanager
def track(device: torch.device | str | None = None):
    """Measure wall time and peak memory of a block.

    Args:
        device: also reset and read the CUDA allocator's peak on this device when it is a CUDA device.

    Yields:
        A :class:`MemoryWatch`, complete when the block exits.
    """
    watch = MemoryWatch()
    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    watch.hwm_reset = reset_peak_rss()
    rss = status_kib("VmRSS")
    watch.rss_before_bytes = rss * 1024 if rss is not None else None
    t0 = time.perf_counter()
    try:
        yield watch
    finally:
        if cuda:
            torch.cuda.synchronize(dev)
            watch.cuda_peak_bytes = torch.cuda.max_memory_allocated(dev)
        watch.wall_s = time.perf_counter() - t0
        hwm = status_kib("VmHWM")
        watch.peak_rss_bytes = hwm * 1024 if hwm is not None else None


@dataclass
class Profile:
    """Per-stage seconds and peak memory of one :func:`profile_attribution` call.

    Attributes:
        stages: seconds per stage, summed over windows and targets (``gate``, ``hessian``, ``kl``,
            ``total`` as in ``Attribution.timings``) plus ``wall`` (the whole call, encoding included).
        memory: the :class:`MemoryWatch` of the call.
        trace_path: the Chrome/Perfetto trace written, if any.
        result: the attribution itself.
    """

    stages: dict[str, float]
    memory: MemoryWatch
    trace_path: str | None = None
    result: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        m = self.memory
        return {
            "stages_s": self.stages,
            "peak_rss_bytes": m.peak_rss_bytes,
            "peak_delta_bytes": m.peak_delta_bytes,
            "hwm_reset": m.hwm_reset,
            "cuda_peak_bytes": m.cuda_peak_bytes,
            "trace": self.trace_path,
        }

    def summary(self) -> str:
        """One line for a terminal: stage times, then memory."""
        m = self.memory
        parts = [f"{k} {v:.2f} s" for k, v in self.stages.items()]
        if m.peak_rss_bytes is not None:
            scope = "" if m.hwm_reset else " (process lifetime)"
            parts.append(f"peak RSS {m.peak_rss_bytes / 2**20:.0f} MiB{scope}")
            if m.peak_delta_bytes is not None:
                parts.append(f"+{m.peak_delta_bytes / 2**20:.0f} MiB over the start")
        if m.cuda_peak_bytes is not None:
            parts.append(f"CUDA peak {m.cuda_peak_bytes / 2**20:.0f} MiB")
        if self.trace_path:
            parts.append(f"trace {self.trace_path}")
        return "profile: " + ", ".join(parts)


def _stage_sums(result) -> dict[str, float]:
    items = result if isinstance(result, list) else [result]
    out: dict[str, float] = {}
    for r in items:
        for k, v in r.timings.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def profile_attribution(attributor, text_or_ids, target=None, *, trace: str | None = None,
                        record_shapes: bool = False, **kwargs) -> Profile:
    """Run ``attributor.attribute(text_or_ids, target, **kwargs)`` and measure it.

    Args:
        attributor: a :class:`~heta_fast.Attributor`.
        text_or_ids, target, **kwargs: as for :meth:`Attributor.attribute` (options, ``generate``, ...).
        trace: write a torch profiler trace (Chrome trace JSON, opens in Perfetto) to this path. The
            profiler slows the run and its own buffers raise the memory peak: measure time and memory
            without it, trace separately.
        record_shapes: record operator input shapes in the trace.

    Returns:
        A :class:`Profile`; ``profile.result`` is the attribution.
    """
    device = getattr(getattr(attributor, "adapter", None), "device", None)
    prof_ctx = contextlib.nullcontext()
    if trace is not None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if device is not None and torch.device(device).type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        prof_ctx = profile(activities=acts, record_shapes=record_shapes, profile_memory=True)
    with prof_ctx as prof, track(device) as watch, torch.profiler.record_function("heta_fast.attribute"):
        result = attributor.attribute(text_or_ids, target, **kwargs)
    if trace is not None:
        prof.export_chrome_trace(trace)
    stages = _stage_sums(result)
    stages["wall"] = watch.wall_s
    return Profile(stages=stages, memory=watch, trace_path=trace, result=result)
