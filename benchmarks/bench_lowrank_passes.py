"""Single-pass against two-pass low-rank S, and both against exact S, side by side (SPEC §2, issue 16).

    python benchmarks/bench_lowrank_passes.py [--tokens 128] [--ranks 16 32] [--threads 1] [--levels token sentence]

Default model, curvature on the last 6 layers (the ``long`` preset's), m = 10 probes, the same seeded probes
and test matrix for every provider; S of the S-only runs at token level and at sentence level (the units of
the Python Language Reference text of ``bench_units.py``). Spearman ρ against exact S, CPU seconds per run
(one torch thread).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_units import reference_text
from utils import append_csv, load_avg, machine

from heta_fast import Attributor
from heta_fast.evaluation.metrics import spearman


def measure(fn):
    """(CPU seconds of this process, None, result): on a shared machine the CPU time with one torch thread is
    what the run costs on one free core; wall time would mostly measure the other jobs."""
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, None, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--levels", nargs="+", default=["token", "sentence"], choices=["token", "sentence"],
                    help="token-level exact S grows as t^2: at a few hundred tokens, run the sentence level alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attributor = Attributor.from_pretrained("default")
    text = reference_text(attributor.tokenizer, args.tokens)
    base = dict(components=("S",), layers=6, num_probes=10)
    print(f"# S on a {args.tokens}-token context, default model, last 6 layers, m=10 — {machine()}, load {load_avg():.1f}")
    rows = []
    for level, extra in (("token", {}), ("sentence", {"units": "sentence"})):
        if level not in args.levels:
            continue
        def values(r, level=level):
            return torch.tensor([u.S for u in r.units] if level == "sentence" else r.S)

        secs, _, exact = measure(lambda extra=extra: attributor.attribute(text, **base, **extra))
        S_exact = values(exact)
        print(f"{level:<8} exact            {secs:8.1f} s   ({len(S_exact)} values)")
        rows.append({"level": level, "provider": "exact", "seconds": f"{secs:.1f}", "spearman_vs_exact": "1.000",
                     "spearman_vs_two_pass": ""})
        for rank in args.ranks:
            two = None
            for passes in (2, 1):
                secs, _, r = measure(lambda extra=extra, rank=rank, passes=passes: attributor.attribute(
                    text, **base, **extra, hessian="lowrank", rank=rank, lowrank_passes=passes))
                S = values(r)
                rho = spearman(S, S_exact)
                rho_two = "" if two is None else f"{spearman(S, two):.3f}"
                two = S if passes == 2 else two
                name = f"lowrank-{rank}-{passes}pass"
                print(f"{level:<8} {name:<16} {secs:8.1f} s   ρ vs exact {rho:.3f}   ρ vs two-pass {rho_two or '-'}")
                rows.append({"level": level, "provider": name, "seconds": f"{secs:.1f}",
                             "spearman_vs_exact": f"{rho:.3f}", "spearman_vs_two_pass": rho_two})
    append_csv("lowrank_passes", [{"tokens": args.tokens, **r} for r in rows])


if __name__ == "__main__":
    main()
