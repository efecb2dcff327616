"""The library presets side by side on the evidence prompts (issue 20): what the default's choice of S costs.

    python benchmarks/bench_presets.py [--model default] [--n 12] [--presets default exact fast] [--threads 2]

The default preset was re-chosen by the evaluation (benchmarks/eval/README.md): low-rank S instead of the exact
S of SPEC §2. This measures its price against the `exact` preset (and `fast`) on the same prompts, in one
process: the first ``--n`` examples of ``benchmarks/eval/data/evidence_qa.jsonl`` (58–90 tokens), target the
gold answer's first token, seed 0. The presets take turns on each example (so drift in the machine's speed
falls on all of them alike); the first example runs once untimed to warm up. Reported: total wall and CPU seconds
per preset, the ratio to the default, and the mean Spearman ρ of each preset's token scores against the exact
preset's (how much of exact S's ranking the cheaper preset keeps). Rows go to ``results/presets.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from utils import append_csv, load_avg, machine

from heta_fast import Attributor
from heta_fast.evaluation.curated import encode
from heta_fast.evaluation.data import load_examples
from heta_fast.evaluation.metrics import spearman

DATA = Path(__file__).resolve().parent / "eval" / "data" / "evidence_qa.jsonl"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=12, help="number of evidence examples")
    ap.add_argument("--presets", nargs="+", default=["default", "exact", "fast"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attributor = Attributor.from_pretrained(args.model)
    examples = load_examples(DATA)[: args.n]
    prompts = []
    for ex in examples:
        enc = encode(attributor.tokenizer, ex)
        prompts.append(enc.ids + [enc.target_id])
    attributor.attribute(prompts[0], preset=args.presets[0], seed=0)  # warm-up, untimed
    wall = dict.fromkeys(args.presets, 0.0)
    cpu = dict.fromkeys(args.presets, 0.0)
    rho = {p: [] for p in args.presets}
    load0 = load_avg()
    for ids in prompts:
        scores = {}
        for p in args.presets:
            w0, c0 = time.perf_counter(), time.process_time()
            scores[p] = torch.tensor(attributor.attribute(ids, preset=p, seed=0).scores)
            wall[p] += time.perf_counter() - w0
            cpu[p] += time.process_time() - c0
        if "exact" in scores:
            for p in args.presets:
                rho[p].append(spearman(scores[p], scores["exact"]))
    tokens = sum(len(ids) - 1 for ids in prompts)
    ref = args.presets[0]
    print(f"# presets on {len(prompts)} evidence prompts ({tokens} context tokens), model {args.model} — {machine()}")
    print(f"# load {load0:.1f} → {load_avg():.1f}")
    rows = []
    for p in args.presets:
        r = sum(rho[p]) / len(rho[p]) if rho[p] else float("nan")
        print(f"{p:<8} wall {wall[p]:7.1f} s ({wall[p] / len(prompts):5.1f} s/example, {wall[p] / wall[ref]:4.2f}x "
              f"{ref})  CPU {cpu[p]:7.1f} s  ρ vs exact {r:.3f}")
        rows.append({"preset": p, "model": args.model, "examples": len(prompts), "tokens": tokens,
                     "wall_s": f"{wall[p]:.1f}", "cpu_s": f"{cpu[p]:.1f}", f"ratio_to_{ref}": f"{wall[p] / wall[ref]:.2f}",
                     "spearman_vs_exact": f"{r:.3f}", "load": f"{load0:.1f}-{load_avg():.1f}", "machine": machine()})
    append_csv("presets", rows)


if __name__ == "__main__":
    main()
