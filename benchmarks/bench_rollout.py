"""Flow rollout: materialised float32 reference vs chunked torch (vs Triton on CUDA), time and peak memory.

    python benchmarks/bench_rollout.py [--quick] [--overwrite] [--ns 512 1024 2048 4096]

Shape: a tiny-model-like stack (L=4, H=4, dh=32, p = n - 1). The baseline is ``flow_rollout_ref`` in
float32, which materialises one layer's `[H, n, n]` attention at a time (the official code materialises
all L layers at once, so it is even larger). Timing uses torch.utils.benchmark on CPU and
triton.testing.do_bench on CUDA. CPU peak memory is the peak-RSS (VmHWM) growth of a fresh child process
per point (an in-process number would depend on what the allocator kept from earlier points); CUDA memory is
``max_memory_allocated`` growth. Prints a table and appends rows to ``benchmarks/results/rollout.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
try:
    import heta_fast
except ImportError:  # plain checkout, not pip-installed
    sys.path.insert(0, str(REPO_ROOT))
    import heta_fast

from heta_fast._triton import triton_available  # noqa: E402
from heta_fast.gate.attn_vecmat import LayerAttention  # noqa: E402
from heta_fast.gate.rollout import flow_rollout, flow_rollout_ref  # noqa: E402

CSV_PATH = Path(os.environ.get("HETA_BENCH_RESULTS", REPO_ROOT / "benchmarks" / "results")) / "rollout.csv"
CSV_FIELDS = [
    "op", "provider", "mode", "x_name", "x", "p50", "p20", "p80", "unit",
    "device_name", "torch", "triton", "heta_fast", "git_sha", "timestamp", "config",
]  # fmt: skip
L, H, DH = 4, 4, 32


def setup_rollout(n: int, device: str) -> tuple[list[LayerAttention], dict[str, Callable[[], torch.Tensor]]]:
    """Inputs and one callable per provider (shared by the speed and memory runs)."""
    g = torch.Generator().manual_seed(0)
    layers = [
        LayerAttention(
            torch.randn(H, n, DH, generator=g).to(device), torch.randn(H, n, DH, generator=g).to(device), DH**-0.5
        )
        for _ in range(L)
    ]
    p = n - 1
    fns = {
        "torch-ref": lambda: flow_rollout_ref(layers, p, dtype=torch.float32),
        "torch-chunked": lambda: flow_rollout(layers, p, backend="torch"),
    }
    if device == "cuda" and triton_available():
        fns["triton"] = lambda: flow_rollout(layers, p, backend="triton")
    return layers, fns


def time_ms(fn: Callable[[], torch.Tensor], device: str, quick: bool) -> tuple[float, float, float]:
    """(p50, p20, p80) in milliseconds."""
    fn()  # warm-up (lazy init, autotune)
    if device == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], rep=50 if quick else 200)
        return p50, p20, p80
    from torch.utils.benchmark import Timer

    m = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.5 if quick else 3.0)
    times = sorted(t * 1e3 for t in m.times)
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return statistics.median(times), q[1], q[7]


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_peak_child(provider: str, n: int) -> None:
    """Child-process entry: print the peak RSS growth (bytes) of one provider call.

    Uses VmHWM of this process's own address space: ru_maxrss would be wrong here because Linux carries
    the parent's high-water mark across fork + exec.
    """
    torch.manual_seed(0)
    _, small = setup_rollout(256, "cpu")
    for fn in small.values():  # warm-up: BLAS buffers, allocator arenas land in the baseline
        fn()
    _, fns = setup_rollout(n, "cpu")
    try:  # "5" resets VmHWM to the current RSS, so the warm-up's own peak does not hide ours
        Path("/proc/self/clear_refs").write_text("5")
        base = _proc_status_kib("VmRSS")
    except OSError:
        base = _proc_status_kib("VmHWM")
    fns[provider]()
    print((_proc_status_kib("VmHWM") - base) * 1024)


def peak_mib(provider: str, n: int, device: str, fn: Callable[[], torch.Tensor]) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not sys.platform.startswith("linux"):
        return float("nan")
    res = subprocess.run(
        [sys.executable, __file__, "--_peak-child", provider, str(n)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )  # fmt: skip
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return int(res.stdout.strip().splitlines()[-1]) / 2**20


def machine_info(device: str) -> dict[str, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name} ({os.cpu_count()} cpus, {torch.get_num_threads()} torch threads)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        sha = "unknown"
    return {
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "heta_fast": getattr(heta_fast, "__version__", "unknown"),
        "git_sha": sha,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timing runs (CPU smoke test)")
    ap.add_argument("--overwrite", action="store_true", help="rewrite the CSV instead of appending")
    ap.add_argument("--ns", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--_peak-child", nargs=2, metavar=("PROVIDER", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._peak_child:
        _cpu_peak_child(args._peak_child[0], int(args._peak_child[1]))
        return

    info = machine_info(args.device)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    config = f"L={L},H={H},dh={DH},p=n-1,fp32"
    rows, table = [], []
    for n in args.ns:
        _, fns = setup_rollout(n, args.device)
        res = {}
        for provider, fn in fns.items():
            t = time_ms(fn, args.device, args.quick)
            mem = peak_mib(provider, n, args.device, fn)
            res[provider] = (t, mem)
            common = dict(op="flow_rollout", provider=provider, x_name="n", x=n, timestamp=stamp, config=config, **info)
            rows.append(dict(common, mode="speed", p50=f"{t[0]:.3f}", p20=f"{t[1]:.3f}", p80=f"{t[2]:.3f}", unit="ms"))
            rows.append(dict(common, mode="memory", p50=f"{mem:.2f}", p20="", p80="", unit="MiB"))
        table.append((n, res))
        del fns

    print(f"flow_rollout, {config}; device: {info['device_name']}; torch {info['torch']}, triton {info['triton']}")
    providers = list(table[0][1])
    head = f"{'n':>6} | " + " | ".join(f"{p + ' ms (p20-p80)':>30}" for p in providers)
    head += " | " + " | ".join(f"{p + ' MiB':>18}" for p in providers) + " | speedup | mem ratio"
    print(head)
    print("-" * len(head))
    for n, res in table:
        cells = [f"{t[0]:10.1f} ({t[1]:8.1f}-{t[2]:8.1f})" for t, _ in res.values()]
        mems = [f"{mem:18.1f}" for _, mem in res.values()]
        ref_t, ref_m = res["torch-ref"]
        ch_t, ch_m = res["torch-chunked"]
        ratio_m = ref_m / ch_m if ch_m > 0 else float("inf")
        print(f"{n:>6} | " + " | ".join(f"{c:>30}" for c in cells) + " | " + " | ".join(mems)
              + f" | {ref_t[0] / ch_t[0]:6.2f}x | {ratio_m:8.1f}x")  # fmt: skip
    print("speedup = torch-ref time / torch-chunked time; mem ratio = torch-ref peak / torch-chunked peak")

    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    new_file = args.overwrite or not CSV_PATH.exists()
    with CSV_PATH.open("w" if args.overwrite else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} rows to {CSV_PATH.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
