"""The blocked attention core's row passes fused (issue 31): S with the compiled row kernels against the torch ops.

    python benchmarks/bench_score_rows.py [--tokens 2000 4000] [--presets document default] [--threads 2]
        [--repeats 2] [--model default]

On long inputs S builds its graphs with the query-blocked attention core (``heta_fast/hf/attention_core.py``), whose
elementwise work over each score block (dS = P ⊙ (dP − δ) in the first backward, the softmax's part of the second)
runs either as one torch op per pass or row by row in ``heta_fast._C`` (``heta_fast/hf/score_rows.py``). This times
whole S (``components=("S",)``; the `document` preset with sentence units, the `default` preset with tokens) on a
needle haystack of each ``--tokens`` (``benchmarks/eval/needle.py``'s first fresh needle with its distractor, the
answer's first token as the target), the two alternating ``--repeats`` times in one process after one discarded
warm-up run (a process's first S pays for growing the allocator's heap: benchmarks/RESULTS.md), with the largest
difference of S relative to its largest value (float32 rounding: the same function summed in another order).
Rows go to ``results/score_rows.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from utils import append_csv, fresh_needle_case, machine, s_values

from heta_fast import Attributor, _ext


def run_s(attr, prompt, target, kw, row_kernels):
    """(S seconds, total seconds, S as float64) with the row passes on ``row_kernels`` ("ext" or "torch")."""
    saved = os.environ.get("HETA_FAST_BACKEND")
    os.environ["HETA_FAST_BACKEND"] = row_kernels
    try:
        t0 = time.perf_counter()
        res = attr.attribute(prompt, target, **kw)[0]
        seconds = time.perf_counter() - t0
    finally:
        if saved is None:
            del os.environ["HETA_FAST_BACKEND"]
        else:
            os.environ["HETA_FAST_BACKEND"] = saved
    return res.timings["hessian"], seconds, s_values(res)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2000, 4000])
    ap.add_argument("--presets", nargs="+", default=["document", "default"], choices=["document", "default"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    if not _ext.has_ext():
        sys.exit(f"heta_fast._C is not loaded ({_ext.load_error()}): nothing to compare; {_ext.BUILD_HINT}")
    if args.threads:
        torch.set_num_threads(args.threads)
    attr = Attributor.from_pretrained(args.model, progress=False)
    print(f"{machine()}; {args.model}")
    print("| preset | tokens | row passes | S s | rel. difference |")
    print("|---|---|---|---|---|")
    warmed = False
    for length in args.tokens:
        prompt, target, n = fresh_needle_case(attr, length)
        for preset in args.presets:
            kw = {"preset": preset, "components": ("S",), **({"units": "sentence"} if preset == "document" else {})}
            if not warmed:
                s, _, _ = run_s(attr, prompt, target, kw, "ext")
                print(f"(warm-up, discarded: {preset}, {n} tokens, S {s:.2f} s)", flush=True)
                warmed = True
            ref = None
            for rep in range(args.repeats):
                for row_kernels in ("torch", "ext"):
                    s, seconds, S = run_s(attr, prompt, target, kw, row_kernels)
                    ref = S if ref is None else ref
                    diff = float((S - ref).abs().max() / ref.abs().max())
                    print(f"| {preset} | {n} | {row_kernels} | {s:.2f} | {diff:.1e} |", flush=True)
                    append_csv("score_rows", [dict(model=args.model, preset=preset, tokens=n, repeat=rep,
                                                   row_passes=row_kernels, s_seconds=round(s, 2),
                                                   total_seconds=round(seconds, 2), rel_difference=diff)])


if __name__ == "__main__":
    main()
