"""Several targets of one text (a continuation explained token by token): per-target loop vs shared work.

    python benchmarks/bench_multi_target.py [--model small|default] [--prompt-len 24] [--targets 8]
                                            [--num-probes 2]

``loop`` runs :func:`heta_fast.engine.evaluate` once per target (its own gate forward, its own masked KL
pass). ``shared`` is :func:`heta_fast.engine.evaluate_many`, which ``Attributor.attribute`` uses for a
continuation or ``generate=``: one recorded forward for every target's gate, one masked KL pass whose
suffix runs serve every later prediction position. S stays per target (its cost is the backwards).
Both give the same numbers; the script checks it. Times are per stage, summed over targets.
"""

from __future__ import annotations

import argparse
import time

import torch
from utils import append_csv, machine

from heta_fast.engine import evaluate, evaluate_many
from heta_fast.hf import ModelAdapter
from heta_fast.options import HetaOptions
from heta_fast.probes import draw_probes


def load(name: str):
    if name == "default":
        from heta_fast.models import load_model

        return load_model("default")[0]
    from heta_fast.testing import tiny_model

    return tiny_model("llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=4096, initializer_range=0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", choices=["small", "default"])
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--num-probes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = ModelAdapter(model)
    n = args.prompt_len + args.targets
    ids = torch.randint(0, adapter.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    targets = list(range(args.prompt_len, n))
    opts = HetaOptions(num_probes=args.num_probes)
    d = adapter.hidden_size
    probes = [draw_probes(t, opts.num_probes, d, opts.seed).float() for t in targets]
    mask_vec = torch.zeros(d)
    evaluate(adapter, ids[:8], int(ids[8]), opts, probes=probes[0][:8], mask_vec=mask_vec)  # warm-up

    t0 = time.perf_counter()
    loop = [evaluate(adapter, ids[:t], int(ids[t]), opts, probes=pr, mask_vec=mask_vec) for t, pr in zip(targets, probes)]
    loop_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = evaluate_many(adapter, ids, targets, opts, probes=probes, mask_vec=mask_vec)
    shared_wall = time.perf_counter() - t0

    print(f"# {args.targets} targets after a {args.prompt_len}-token prompt, model={args.model}, "
          f"m={opts.num_probes} — {machine()}")
    print("| stage | loop s | shared s | speed-up | max rel. diff |\n|---|---|---|---|---|")
    rows = []
    for stage, comp in (("gate", "M"), ("hessian", "S"), ("kl", "I")):
        a = sum(c.timings[stage] for c in loop)
        b = sum(c.timings[stage] for c in shared)
        diff = max(float((getattr(x, comp) - getattr(y, comp)).abs().max() / getattr(x, comp).abs().max())
                   for x, y in zip(loop, shared))
        print(f"| {stage} | {a:.2f} | {b:.2f} | {a / b:.1f}x | {diff:.1e} |")
        rows.append({"model": args.model, "targets": args.targets, "stage": stage, "loop_s": f"{a:.3f}",
                     "shared_s": f"{b:.3f}", "speedup": f"{a / b:.2f}", "max_rel_diff": f"{diff:.1e}"})
    print(f"| all (wall) | {loop_wall:.2f} | {shared_wall:.2f} | {loop_wall / shared_wall:.1f}x | |")
    rows.append({"model": args.model, "targets": args.targets, "stage": "wall", "loop_s": f"{loop_wall:.3f}",
                 "shared_s": f"{shared_wall:.3f}", "speedup": f"{loop_wall / shared_wall:.2f}", "max_rel_diff": ""})
    print(f"rows appended to {append_csv('multi_target', rows)}")


if __name__ == "__main__":
    main()
