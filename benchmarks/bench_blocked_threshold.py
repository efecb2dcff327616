"""The blocked core from 512 rows (issue 31): S with the query-blocked attention core against the whole-matrix core
on contexts of 500–1,000 tokens.

    python benchmarks/bench_blocked_threshold.py [--tokens 540 780 950] [--presets document default] [--threads 2]
        [--repeats 2] [--model default]

Graph-building attention calls with more than ``BLOCKED_MIN_SCORES`` scores per head take the blocked core
(``heta_fast/hf/attention_core.py``), and on the CPU their second backwards run two directions at a time
(``heta_fast/curvature/batched.py``, ``cpu_slice``). This times whole S (``components=("S",)``; the `document`
preset with sentence units, the `default` preset with tokens) on a needle haystack of each ``--tokens``
(``benchmarks/eval/needle.py``'s first fresh needle with its distractor, the answer's first token as the target)
at the threshold as shipped and at the earlier 1,024² ("whole" below about 1,024 tokens), alternating
``--repeats`` times in one process, and the largest difference of S relative to its largest value (float32
rounding only: the two cores compute the same function). Rows go to ``results/blocked_threshold.csv``.
"""

from __future__ import annotations

import argparse
import time

import torch
from utils import append_csv, fresh_needle_case, machine, s_values

from heta_fast import Attributor
from heta_fast.hf import attention_core

EARLIER_THRESHOLD = 1024 * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[540, 780, 950])
    ap.add_argument("--presets", nargs="+", default=["document", "default"], choices=["document", "default"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attr = Attributor.from_pretrained(args.model, progress=False)
    shipped = attention_core.BLOCKED_MIN_SCORES
    blocked_calls = []  # which core ran: block_rows is asked only when a call takes the blocked core
    block_rows = attention_core.block_rows
    attention_core.block_rows = lambda *a: blocked_calls.append(1) or block_rows(*a)
    print(f"{machine()}; {args.model}; threshold as shipped {shipped} scores, earlier {EARLIER_THRESHOLD}")
    print("| preset | tokens | core | S s | rel. difference |")
    print("|---|---|---|---|---|")
    for length in args.tokens:
        prompt, first, n = fresh_needle_case(attr, length)
        for preset in args.presets:
            kw = {"preset": preset, "components": ("S",), **({"units": "sentence"} if preset == "document" else {})}
            ref = None
            for rep in range(args.repeats):
                for threshold in (EARLIER_THRESHOLD, shipped):
                    attention_core.BLOCKED_MIN_SCORES = threshold
                    blocked_calls.clear()
                    try:
                        t0 = time.perf_counter()
                        res = attr.attribute(prompt, first, **kw)[0]
                        seconds = time.perf_counter() - t0
                    finally:
                        attention_core.BLOCKED_MIN_SCORES = shipped
                    # Units' S (a unit that levels left unscored has none; the same ones in every run), or tokens'.
                    S = s_values(res)
                    ref = S if ref is None else ref
                    diff = float((S - ref).abs().max() / ref.abs().max())
                    core = "blocked" if blocked_calls else "whole"
                    print(f"| {preset} | {n} | {core} | {res.timings['hessian']:.2f} | {diff:.1e} |", flush=True)
                    append_csv("blocked_threshold", [dict(model=args.model, preset=preset, tokens=n, repeat=rep,
                                                          threshold=threshold, core=core,
                                                          s_seconds=round(res.timings["hessian"], 2),
                                                          total_seconds=round(seconds, 2), rel_difference=diff)])


if __name__ == "__main__":
    main()
