"""A long input on the default model on the CPU: windowing (SPEC §4) with the fast paths (issue 7).

    python benchmarks/bench_long_context.py [--tokens 2048] [--preset long] [--threads N]

The text is the curated evaluation set's passages joined until the context has ``--tokens`` tokens
(a built-in text when ../shared/data is absent); the target is the token after them. Prints the
per-stage times, the windows, peak memory and the top tokens, and writes the full result to
``benchmarks/results/long_context_<tokens>.json`` (scores, M, S, I, options, timings).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from utils import RESULTS_DIR, machine, peak_rss_mib

from heta_fast import Attributor
from heta_fast.engine import window_starts
from heta_fast.options import PRESETS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "curated_qa_100.json"
FALLBACK = (
    "The history of the river valley is long. Farmers settled along its banks thousands of years ago, "
    "built canals to water their fields, and traded grain with the towns upstream. "
)


def long_text(tokenizer, n_tokens: int) -> str:
    """Passages of the curated set (or the fallback) joined until they hold n_tokens + 1 tokens."""
    pieces = [ex["input_text"] for ex in json.loads(DATA.read_text())["examples"]] if DATA.exists() else [FALLBACK]
    text, k = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= n_tokens:
        text += pieces[k % len(pieces)] + "\n"
        k += 1
    ids = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    end = ids["offset_mapping"][n_tokens][1]  # context = first n_tokens tokens, target = token n_tokens
    return text[:end]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048, help="context length (the target is one more token)")
    ap.add_argument("--preset", default="long", choices=list(PRESETS))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attributor = Attributor.from_pretrained("default", preset=args.preset, progress=True)
    text = long_text(attributor.tokenizer, args.tokens)
    opts = attributor.options
    print(f"# {args.tokens}-token context, default model, preset {args.preset!r}: {PRESETS[args.preset]} — {machine()}")
    t0 = time.perf_counter()
    res = attributor.attribute(text)  # target = the last token; context = the tokens before it
    wall = time.perf_counter() - t0
    windows = window_starts(res.target_position, opts.window, opts.overlap)
    print(f"context {res.target_position} tokens, target {res.target_token!r}, {len(windows)} windows of "
          f"{opts.window} (overlap {opts.overlap})")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()))
    print(f"wall {wall:.1f} s, peak resident memory {peak_rss_mib():.0f} MiB")
    print("top tokens: " + ", ".join(f"{i}:{tok!r} {v:.3g}" for i, tok, v in res.topk(8)))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"long_context_{args.tokens}.json"
    payload = res.to_dict() | {"bench": {"machine": machine(), "wall_seconds": wall, "windows": len(windows),
                                         "peak_rss_mib": peak_rss_mib(), "preset": args.preset}}
    out.write_text(json.dumps(payload))
    print(f"written {out}")


if __name__ == "__main__":
    main()
