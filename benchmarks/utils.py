"""Shared benchmark helpers: machine description, timing, peak memory, CSV rows."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The CPU (or GPU) model, core count and torch version: printed with every table."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_avg() -> float:
    return os.getloadavg()[0]


def reset_peak_rss() -> None:
    """Make VmHWM equal the current RSS ("5" to clear_refs), so a later peak is this section's own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn, repeats: int = 1):
    """(best seconds over ``repeats``, peak extra resident MiB over the calls, last result)."""
    best = float("inf")
    reset_peak_rss()
    base = rss_mib()
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, peak_rss_mib() - base, out


def append_csv(name: str, rows: list[dict]) -> Path:
    """Append rows (with machine, commit and time stamped on each) to benchmarks/results/<name>.csv."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.csv"
    stamp = {"machine": machine(), "git_sha": git_sha(), "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
             "load_avg": f"{load_avg():.1f}"}
    rows = [{**r, **stamp} for r in rows]
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    return path
