"""Benchmark heta_fast::kl_from_hidden on CPU: compiled ext vs chunked torch vs materialised float32.

Shape: SmolLM2 LM head (d=576, V=49152), R masked runs ∈ {32, 128, 512}.

    python benchmarks/bench_kl_op.py --quick

Prints a table and appends rows to benchmarks/results/kl_op.csv. Peak memory is the extra resident
memory of one call, measured in a forked child (ru_maxrss minus the RSS before the call), next to
the theoretical size of the largest transient logits buffer.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

import heta_fast
from heta_fast import _ext
from heta_fast.information import kl_op, kl_op_reference

RESULTS = Path(os.environ.get("HETA_BENCH_RESULTS", Path(__file__).resolve().parent / "results")) / "kl_op.csv"
FIELDS = [
    "op", "provider", "x_name", "x", "d", "V", "block_size", "p50", "p20", "p80", "unit",
    "peak_extra_mb", "transient_mb", "max_abs_err", "device_name", "nproc", "torch", "heta_fast",
    "git_sha", "timestamp",
]  # fmt: skip


def kl_materialised_fp32(hidden, weight, base_logp):
    """The naive baseline: full [R, V] logits, log_softmax and KL in float32."""
    logq = torch.log_softmax(hidden @ weight.T, dim=-1)
    return (base_logp.exp() * (base_logp - logq)).sum(-1).clamp_min(0)


def setup_kl_op(R: int, d: int, V: int, block_size: int):
    """Returns (inputs, fn_by_provider, transient_bytes_by_provider)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(R, d, generator=g)
    weight = torch.randn(V, d, generator=g) * 0.05
    base_logp = torch.log_softmax(torch.randn(V, generator=g) * 2, dim=-1)
    fns = {
        "torch-chunked": lambda: kl_op_reference.kl_from_hidden_chunked(hidden, weight, base_logp, None, 0.0, block_size),
        "materialised-fp32": lambda: kl_materialised_fp32(hidden, weight, base_logp),
    }
    if _ext.has_ext():
        fns = {"ext": lambda: kl_op.kl_from_hidden(hidden, weight, base_logp, block_size=block_size, backend="ext"), **fns}
    bs = min(block_size, V)
    transient = {"ext": R * bs * 4, "torch-chunked": 3 * R * bs * 4, "materialised-fp32": 3 * R * V * 4}
    return (hidden, weight, base_logp), fns, transient


def time_fn(fn, min_run_time: float) -> tuple[float, float, float]:
    m = tbench.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    ts = sorted(m.times)
    q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
    return m.median, q[0], q[3]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _force_mmap_for_large_allocations() -> None:
    # Otherwise glibc serves tensors from heap memory freed by earlier calls, which is already
    # resident and invisible to ru_maxrss: hand free heap pages back (malloc_trim) and send large
    # allocations to fresh mmaps (M_MMAP_THRESHOLD = -3 in malloc.h).
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn) -> float:
    """Extra peak RSS of one call, measured in a forked child so providers don't mask each other."""
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        return float("nan")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            torch.set_num_threads(1)  # no OpenMP pool across fork; memory does not depend on threads
            _force_mmap_for_large_allocations()
            base = _rss_bytes()
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            os.write(w, str(max(0, peak - base)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(data) if data else float("nan")


def machine_info() -> dict:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parents[2]).stdout.strip()
    except OSError:
        sha = ""
    return {
        "device_name": f"cpu: {name}",
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "heta_fast": heta_fast.__version__,
        "git_sha": sha or "unknown",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short timing runs (CPU smoke test)")
    p.add_argument("--rows", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--V", type=int, default=49152)
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--overwrite", action="store_true", help="start a fresh CSV instead of appending")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)

    info = machine_info()
    min_run = 0.3 if args.quick else 2.0
    print(f"heta_fast kl_from_hidden  d={args.d} V={args.V} block={args.block_size}  {info['device_name']}  "
          f"nproc={info['nproc']} threads={torch.get_num_threads()} torch={info['torch']}  ext={_ext.has_ext()}")  # fmt: skip
    if not _ext.has_ext():
        print(f"  (ext unavailable: {_ext.load_error()})")
    header = f"{'R':>5} {'provider':<18} {'p50 ms':>9} {'p20-p80 ms':>15} {'vs materialised':>15} {'peak MB':>9} {'transient MB':>13} {'max|err|':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for R in args.rows:
        _, fns, transient = setup_kl_op(R, args.d, args.V, args.block_size)
        with torch.no_grad():
            ref = fns["materialised-fp32"]().double()
            results = {}
            for name, fn in fns.items():
                err = (fn().double() - ref).abs().max().item()
                p50, p20, p80 = time_fn(fn, min_run)
                results[name] = (p50, p20, p80, peak_extra_bytes(fn), err)
        base = results["materialised-fp32"][0]
        for name, (p50, p20, p80, peak, err) in results.items():
            print(f"{R:>5} {name:<18} {p50 * 1e3:>9.2f} {f'{p20 * 1e3:.2f}-{p80 * 1e3:.2f}':>15} "
                  f"{base / p50:>14.2f}x {peak / 2**20:>9.1f} {transient[name] / 2**20:>13.1f} {err:>9.1e}")  # fmt: skip
            rows.append({
                "op": "kl_from_hidden", "provider": name, "x_name": "R", "x": R, "d": args.d, "V": args.V,
                "block_size": args.block_size, "p50": f"{p50 * 1e3:.4f}", "p20": f"{p20 * 1e3:.4f}",
                "p80": f"{p80 * 1e3:.4f}", "unit": "ms", "peak_extra_mb": f"{peak / 2**20:.1f}",
                "transient_mb": f"{transient[name] / 2**20:.1f}", "max_abs_err": f"{err:.3e}", **info,
            })  # fmt: skip
    print("(vs materialised = materialised p50 / provider p50; peak MB = extra RSS of one call, 1 thread)")

    if not args.no_csv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        new = args.overwrite or not RESULTS.exists()
        with RESULTS.open("w" if args.overwrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"appended {len(rows)} rows to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
