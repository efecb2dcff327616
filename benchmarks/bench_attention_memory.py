"""Peak memory and time of one low-rank S direction, whole-matrix against query-blocked attention (issue 16).

    python benchmarks/bench_attention_memory.py [--tokens 1024 2048] [--cores whole blocked]

Default model, ``attribute(components=("S",), hessian="lowrank", rank=1, lowrank_passes=1, layers=6)``: one
curvature graph over the whole context through the last 6 layers and one Hessian–vector product through it.
``whole`` raises the blocked core's threshold out of reach (the attention core as before issue 16: P saved per
layer, P, dP, dP − δ, dS in the first backward); ``blocked`` leaves it as shipped. Each run is a fresh child
process with one torch thread and heta_fast's own malloc settings (the Attributor's: freed blocks stay in the
heap for reuse), so its peak resident memory above the loaded, warmed-up model is what a user of this run
sees; "of it graph + HVP" is the peak above the RSS when the curvature graph starts (the clean forward's KV
cache and layer inputs already held). Also printed: ``bytes_per_direction``, what the memory check budgets for
that one direction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from utils import append_csv, machine

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {bench_dir!r})
from bench_units import reference_text
from heta_fast import Attributor
from heta_fast.curvature.batched import bytes_per_direction
from heta_fast.hf import attention_core
from heta_fast.profiling import reset_peak_rss, status_kib

tokens, core = int(sys.argv[1]), sys.argv[2]
if core == "whole":
    attention_core.BLOCKED_MIN_SCORES = float("inf")
attributor = Attributor.from_pretrained("default")
text = reference_text(attributor.tokenizer, tokens)
kw = dict(components=("S",), hessian="lowrank", rank=1, lowrank_passes=1, layers=6, max_memory=64 * 2**30)
attributor.attribute(reference_text(attributor.tokenizer, 32), **kw)  # warm up kernels and the allocator
from heta_fast.curvature import batched
before_graph = []
build = batched.CurvatureOperator.__init__
def build_and_mark(self, *a, **k):  # RSS when the curvature graph starts: the clean state is held by then
    before_graph.append(status_kib("VmRSS"))
    build(self, *a, **k)
batched.CurvatureOperator.__init__ = build_and_mark
reset_peak_rss()
base = status_kib("VmRSS")
wall0, cpu0 = time.perf_counter(), time.process_time()
res = attributor.attribute(text, **kw)
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
rows = res.target_position + 1  # context plus the sink token the default options prepend
print(json.dumps({{"tokens": tokens, "core": core, "rows": rows, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                  "hessian_s": round(res.timings["hessian"], 1),
                  "peak_above_model_mib": round((status_kib("VmHWM") - base) / 1024),
                  "peak_rss_mib": round(status_kib("VmHWM") / 1024),
                  "graph_and_hvp_mib": round((status_kib("VmHWM") - before_graph[0]) / 1024),
                  "estimate_mib": round(bytes_per_direction(attributor.adapter, rows, rows, 6) / 2**20)}}))
"""


def run_child(tokens: int, core: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = CHILD.format(bench_dir=str(Path(__file__).resolve().parent))
    out = subprocess.run([sys.executable, "-c", code, str(tokens), core], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"t={tokens} {core}: child failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--cores", nargs="+", default=["whole", "blocked"], choices=["whole", "blocked"])
    args = ap.parse_args()
    print(f"# one low-rank S direction, default model, last 6 layers — {machine()} (children: 1 thread)")
    print("| tokens | core | hessian s | CPU s | wall s | peak above model MiB | of it graph + HVP | estimate MiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for tokens in args.tokens:
        for core in args.cores:
            r = run_child(tokens, core)
            print(f"| {tokens} | {core} | {r['hessian_s']} | {r['cpu_s']} | {r['wall_s']} | "
                  f"{r['peak_above_model_mib']} | {r['graph_and_hvp_mib']} | {r['estimate_mib']} |", flush=True)
            rows.append(r)
    append_csv("attention_memory", rows)


if __name__ == "__main__":
    main()
