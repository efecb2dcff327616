"""The final layer for one row (issue 31): what computing the model's last layer for the prediction row only saves.

    python benchmarks/bench_last_row.py [--tokens 4000] [--threads 2] [--repeats 2] [--directions 2]

S's graphs and the KL pass of one target read nothing but the prediction row's final hidden state, so
``ModelAdapter.last_row_only`` runs the final layer's attention from that row alone and its MLP on it alone. This
times, on a needle haystack of ``--tokens`` tokens (``benchmarks/eval/needle.py``, needle 0 with its distractor,
the answer's first token as the target), the curvature graph over the last 6 layers (the ``document`` preset's)
and one batched product of ``--directions`` directions through it, with the whole final layer ("full") and with
``last_row_only`` ("last row"), alternating ``--repeats`` times in one process; and the relative difference of
the products (float32 rounding only). Rows go to ``results/last_row.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from utils import append_csv, machine

from heta_fast import Attributor
from heta_fast.curvature.batched import CurvatureOperator, clean_state

sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))
import needle as nd  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--directions", type=int, default=2, help="directions in the timed product (the CPU's slice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attr = Attributor.from_pretrained("default", progress=False)
    prompt, _, _ = nd.build_case(attr, nd.documents(None), nd.NEEDLES, 0, args.tokens, 0.5, True)
    tok = attr.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"][0]
    target = tok(nd.NEEDLES[0]["answer"], add_special_tokens=False)["input_ids"][0]
    adapter = attr.adapter
    whole = adapter.last_row_only
    print(f"{machine()}; {ids.numel()} tokens, last 6 layers, {args.directions} directions per product")
    print("| variant | graph s | product s | rel. difference |")
    print("|---|---|---|---|")
    with adapter.attached():
        X, point, layer, _, head = clean_state(adapter, ids, 6, target)
        V = torch.randn(args.directions, *point.shape, generator=torch.Generator().manual_seed(0), dtype=point.dtype)
        ref = None
        for rep in range(args.repeats):
            for variant in ("full", "last row"):
                # "full": the same operator with last_row_only made a no-op.
                adapter.last_row_only = whole if variant == "last row" else contextlib.nullcontext
                try:
                    t0 = time.perf_counter()
                    op = CurvatureOperator(adapter, X, point, target, "hessian", layer=layer, head=head)
                    t1 = time.perf_counter()
                    out = op(V).double()
                    t2 = time.perf_counter()
                finally:
                    adapter.last_row_only = whole
                ref = out if ref is None else ref
                diff = float((out - ref).norm() / ref.norm())
                print(f"| {variant} | {t1 - t0:.1f} | {t2 - t1:.1f} | {diff:.1e} |", flush=True)
                append_csv("last_row", [dict(tokens=ids.numel(), variant=variant, repeat=rep,
                                             directions=args.directions, graph_seconds=round(t1 - t0, 2),
                                             product_seconds=round(t2 - t1, 2), rel_difference=diff)])
                del op, out


if __name__ == "__main__":
    main()
