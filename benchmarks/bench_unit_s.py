"""A cheaper unit S for long inputs (issue 31): which low-rank settings keep the sentence ranking of exact unit S?

    python benchmarks/bench_unit_s.py [--tokens 512] [--threads 2] [--probes 4] [--needle 0]
        [--settings RANK,PASSES,LAYERS ...] [--seeds 0 ...]

The input is a needle haystack (``benchmarks/eval/needle.py``: a Python Language Reference section with a planted
fact, its distractor and the cue), the target the answer's first token, the units its sentences (the cue
included), as the ``document`` preset scores them. The reference is exact unit S (SPEC §6: every unit's block
HVPs, ``--probes`` probes per token, the last 6 layers as the preset). Each low-rank setting (rank, range-finder
passes, layers differentiated) is timed on the same input in the same process and compared with the reference by
Spearman's ρ over the units and by the reference's top unit's rank. Rows go to ``results/unit_s.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from utils import append_csv, machine

from heta_fast import Attributor

sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))
import needle as nd  # noqa: E402

SETTINGS = [  # (rank, passes, layers)
    (16, 1, 6), (8, 1, 6), (4, 1, 6), (16, 1, 3), (8, 1, 3), (8, 1, 2), (16, 2, 6),
]


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    ra, rb = torch.tensor(ranks(a)), torch.tensor(ranks(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--probes", type=int, default=4, help="probes per token of the exact reference")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--needle", type=int, default=0, help="needle k, planted in document k (as needle.py)")
    ap.add_argument("--settings", nargs="+", default=None, metavar="RANK,PASSES,LAYERS",
                    help="low-rank settings to compare (default: the table's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="range-finder seeds per setting")
    args = ap.parse_args()
    settings = [tuple(int(x) for x in v.split(",")) for v in args.settings] if args.settings else SETTINGS
    if args.threads:
        torch.set_num_threads(args.threads)
    attr = Attributor.from_pretrained("default")
    needle = nd.NEEDLES[args.needle]
    docs = nd.documents(None)
    doc = nd.haystack(attr.tokenizer, docs[args.needle % len(docs)], args.tokens)
    text, _ = nd.plant(doc, needle["distractor"], 0.0)
    text, _ = nd.plant(text, needle["needle"], 0.5)
    prompt = text + "\n\n" + needle["cue"]
    first = attr.tokenizer.decode(attr.tokenizer(needle["answer"], add_special_tokens=False)["input_ids"][:1])
    base = dict(units="sentence", components=("S",), coarse="none", num_probes=args.probes)
    t0 = time.perf_counter()
    ref = attr.attribute(prompt, first, hessian="exact", layers=6, seed=0, **base)[0]
    ref_s = [u.S for u in ref.units]
    ref_secs = time.perf_counter() - t0
    top = max(range(len(ref_s)), key=lambda j: ref_s[j])
    print(f"{machine()}; {ref.target_position} context tokens, {len(ref_s)} units; exact unit S "
          f"({args.probes} probes, 6 layers): {ref_secs:.0f} s")
    print("| rank | passes | layers | seed | S seconds | Spearman vs exact | exact's top unit ranks |")
    print("|---|---|---|---|---|---|---|")
    for (rank, passes, layers), seed in ((s, seed) for s in settings for seed in args.seeds):
        t0 = time.perf_counter()
        res = attr.attribute(prompt, first, hessian="lowrank", rank=rank, lowrank_passes=passes, layers=layers,
                             seed=seed, **base)[0]
        secs = time.perf_counter() - t0
        s = [u.S for u in res.units]
        rho = spearman(s, ref_s)
        top_rank = 1 + sum(v > s[top] for v in s)
        print(f"| {rank} | {passes} | {layers} | {seed} | {secs:.1f} | {rho:.3f} | {top_rank} |", flush=True)
        append_csv("unit_s", [dict(tokens=ref.target_position, needle=args.needle, seed=seed, units=len(s), rank=rank,
                                   passes=passes,
                                   layers=layers, seconds=round(secs, 2), spearman=round(rho, 4), top_rank=top_rank,
                                   exact_probes=args.probes, exact_seconds=round(ref_secs, 1))])


if __name__ == "__main__":
    main()
