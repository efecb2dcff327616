"""What keeping freed memory in the process (heta_fast.cpu_allocator) buys the batched HVP paths on a CPU.

    python benchmarks/bench_cpu_allocator.py [--contexts 64 128] [--repeats 2] [--threads 2]

The malloc settings are per process and cannot be undone, so each measurement runs in a child process,
tuned (the library default) and untuned (``HETA_FAST_MALLOC_TUNING=0``) alternating, in one run of this
script on the same text and seeded probes. Reported: seconds of S with ``hessian="lowrank", rank=64`` and
``"exact"`` and the ratio untuned / tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from utils import append_csv, machine


def child(args) -> None:
    import torch
    from utils import bench_model, measure

    from heta_fast.cpu_allocator import malloc_tuning_status, tune_malloc_for_tensors
    from heta_fast.curvature.batched import sensitivity_batched
    from heta_fast.hf import ModelAdapter
    from heta_fast.probes import draw_probes

    tune_malloc_for_tensors()
    torch.set_num_threads(args.threads)
    model, context_ids, _ = bench_model("default", "cpu")
    adapter = ModelAdapter(model)
    ids = context_ids(args.t + 1)
    probes = draw_probes(args.t, 10, adapter.hidden_size, seed=0).float()
    kw = dict(hessian="lowrank", rank=64) if args.provider == "lowrank-64" else {}
    secs, peak, _ = measure(lambda: sensitivity_batched(adapter, ids[:-1], int(ids[-1]), probes=probes, **kw))
    print(json.dumps({"seconds": secs, "peak_mib": peak, "tuning": malloc_tuning_status()}))


def run_child(t: int, provider: str, tuned: bool, threads: int) -> dict:
    env = dict(os.environ, HETA_FAST_MALLOC_TUNING="1" if tuned else "0")
    cmd = [sys.executable, __file__, "--child", "--t", str(t), "--provider", provider, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--providers", nargs="+", default=["lowrank-64", "exact"])
    ap.add_argument("--repeats", type=int, default=2, help="alternating child pairs per case (best is kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--t", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--provider", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(f"# S on the default model, m=10, {args.threads} threads — {machine()}")
    print(f"{'t':>4} {'provider':<11} {'untuned s':>10} {'tuned s':>9} {'speed-up':>9} {'untuned MiB':>12} {'tuned MiB':>10}")
    rows = []
    for t in args.contexts:
        for provider in args.providers:
            best = {True: None, False: None}
            for _ in range(args.repeats):
                for tuned in (False, True):
                    res = run_child(t, provider, tuned, args.threads)
                    if best[tuned] is None or res["seconds"] < best[tuned]["seconds"]:
                        best[tuned] = res
            off, on = best[False], best[True]
            print(f"{t:>4} {provider:<11} {off['seconds']:>10.2f} {on['seconds']:>9.2f} "
                  f"{off['seconds'] / on['seconds']:>8.2f}x {off['peak_mib']:>12.0f} {on['peak_mib']:>10.0f}", flush=True)
            rows.append({"t": t, "provider": provider, "threads": args.threads,
                         "untuned_seconds": f"{off['seconds']:.3f}", "tuned_seconds": f"{on['seconds']:.3f}",
                         "speedup": f"{off['seconds'] / on['seconds']:.2f}",
                         "untuned_peak_mib": f"{off['peak_mib']:.0f}", "tuned_peak_mib": f"{on['peak_mib']:.0f}"})
    if not args.no_csv:
        print(f"rows appended to {append_csv('cpu_allocator', rows)}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f}s")
