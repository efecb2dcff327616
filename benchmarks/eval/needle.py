"""Needle in a haystack: does sentence-level attribution find the sentence the answer came from? (issue 16)

    python benchmarks/eval/needle.py [--tokens 384] [--depths 0.1 0.5 0.9] [--threads 1]

Haystack: sections of the Python Language Reference shipped with CPython (``pydoc_data.topics``, PSF License
2.0), cut at a sentence boundary near ``--tokens`` tokens. Needles: fact sentences written for this test,
planted between two sentences at each depth. The question repeats the needle's own words up to the answer
(the default model does not answer a bare "Answer:" cue, but completes a cue it can copy), and the target
is the answer's first token (its log-probability is printed and must be well above chance).

Methods, scored over the document's sentences (the cue and special tokens excluded):
* ``heta_units``: sentence units (whole context, exact unit KL, low-rank S of rank 16, last 6 layers);
* ``heta_tokens``: the token level with the same options, token scores summed per sentence;
* ``loo``: leave-one-out at sentence level: the drop of log p(answer) when the sentence is deleted from the text;
* ``random``: seeded random scores.
Metrics: the needle's share of the positive attribution mass, and cite@1 (the top sentence is the needle).
Rows go to benchmarks/eval/needle_results.jsonl and a table to benchmarks/eval/needle_summary.md.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from heta_fast import Attributor
from heta_fast.units import partition, sentence_spans

HERE = Path(__file__).resolve().parent
NEEDLES = [  # (needle sentence, cue repeating its words, answer)
    ("The archive key for the northern lighthouse is kept under the name Marigold.",
     "The archive key for the northern lighthouse is kept under the name", " Marigold"),
    ("Every Tuesday the harbour clock is wound by a keeper called Ortensia.",
     "Every Tuesday the harbour clock is wound by a keeper called", " Ortensia"),
]
SECTIONS = ("execmodel", "exceptions", "naming", "compound", "import", "assignment")


def haystack(tokenizer, n_tokens: int, offset: int) -> str:
    import pydoc_data.topics as topics

    keys = [k for k in SECTIONS if k in topics.topics]
    text = "\n\n".join(topics.topics[k] for k in keys[offset:] + keys[:offset])
    spans = sentence_spans(text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = enc["offset_mapping"][min(n_tokens, len(enc["input_ids"]) - 1)][1]
    end = max(b for a, b in spans if b <= cut)  # the last sentence that ends before the cut
    return text[:end]


def plant(doc: str, needle: str, depth: float) -> tuple[str, tuple[int, int]]:
    """The document with the needle inserted after the sentence at ``depth``; returns it and the needle's span."""
    spans = sentence_spans(doc)
    at = spans[min(len(spans) - 1, max(0, int(depth * len(spans))))][1]
    text = doc[:at] + " " + needle + doc[at:]
    return text, (at + 1, at + 1 + len(needle))


def holder(units, a: int, b: int):
    """The unit (result Unit or UnitSpan) whose character span holds the sentence ``[a, b)``."""
    def span(u):
        return u.char_span if hasattr(u, "char_span") else (u.char_start, u.char_end)

    return next(u for u in units if span(u)[0] is not None and span(u)[0] <= a and b <= span(u)[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=384)
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-tokens", action="store_true", help="skip the token-level HETA run (the slowest)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attr = Attributor.from_pretrained("default")
    tok = attr.tokenizer
    opts = dict(hessian="lowrank", rank=16, layers=6, max_memory=6 * 2**30)
    rows = []
    for k, (needle, cue, answer) in enumerate(NEEDLES):
        doc = haystack(tok, args.tokens, offset=k)
        for depth in args.depths:
            text, needle_span = plant(doc, needle, depth)
            prompt = text + "\n\n" + cue
            sentences = sentence_spans(text)  # the document's sentences (the cue after them is left out)
            needle_idx = sentences.index(needle_span)
            row = {"needle": k, "depth": depth, "sentences": len(sentences), "needle_index": needle_idx}
            t0 = time.perf_counter()
            res = attr.attribute(prompt, answer, units="sentence", **opts)[0]
            row["logp_answer"] = res.target_logprob
            row["tokens"] = res.target_position
            scores = {"heta_units": [holder(res.units, a, b).score for a, b in sentences]}
            row["seconds_heta_units"] = time.perf_counter() - t0
            if not args.no_tokens:
                t0 = time.perf_counter()
                rt = attr.attribute(prompt, answer, **opts)[0]
                units = partition("sentence", prompt, rt.offsets, rt.target_position)
                per = []
                for a, b in sentences:
                    u = holder(units, a, b)
                    per.append(sum(rt.scores[u.start : u.end]))
                scores["heta_tokens"] = per
                row["seconds_heta_tokens"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            full = res.target_logprob
            loo = []
            for a, b in sentences:
                cut = prompt[:a] + prompt[b:]
                loo.append(full - attr.attribute(cut, answer, components=("M",))[0].target_logprob)
            scores["loo"] = loo
            row["seconds_loo"] = time.perf_counter() - t0
            rng = random.Random(1000 * k + int(100 * depth))
            scores["random"] = [rng.random() for _ in sentences]
            for name, vals in scores.items():
                pos = [max(0.0, v) for v in vals]
                total = sum(pos)
                row[f"{name}_share"] = pos[needle_idx] / total if total > 0 else 0.0
                row[f"{name}_cite1"] = int(max(range(len(vals)), key=lambda j: vals[j]) == needle_idx)
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(HERE / "needle_results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    methods = [m for m in ("heta_units", "heta_tokens", "loo", "random") if f"{m}_share" in rows[0]]
    lines = ["| method | needle share (mean) | cite@1 | runs |", "|---|---|---|---|"]
    for m in methods:
        share = sum(r[f"{m}_share"] for r in rows) / len(rows)
        cite = sum(r[f"{m}_cite1"] for r in rows)
        lines.append(f"| {m} | {share:.3f} | {cite}/{len(rows)} | {len(rows)} |")
    (HERE / "needle_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
