"""Inside the passage only: which part of the passage does each method point to? (post-hoc diagnostic, issue 20)

    python benchmarks/eval/within_passage.py OUT [--data PATH] [--model default] [--slice all]

DSA (SPEC §5) divides a method's scores by their sum over the whole context, question and cue included, so a
method that puts most of its mass on the question and the cue scores a small DSA even when, inside the passage,
it points at the support sentence. This reads the stored scores of ``OUT/results.jsonl`` (no model calls;
the tokenizer maps them to segments) and reports, per method, over the passage tokens only (support and
distractor; negative scores clamped to 0 as in DSA's shares):

- ``passage DSA``: support share − distractor share of the passage mass (in [−1, 1]; 2·support share − 1);
- ``top = answer``: examples whose highest-scored passage token is a gold word (the answer in the support);
- ``top in support``: examples whose highest-scored passage token lies in the support sentence;
- ``share outside the passage``: the share of the whole context's mass (question and cue) that this view leaves out;

and the paired difference of passage DSA between each ``--methods`` entry and every other method (mean ±
standard error, wins). Written to ``OUT/within_passage.md``. This view was defined after seeing where HETA's
mass goes; it complements DSA and does not replace it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.curated import RunSettings, encode, load_records, slice_records
from heta_fast.evaluation.data import load_examples
from heta_fast.models import load_model


def passage_view(a: torch.Tensor, support, distractor, gold) -> dict:
    """The passage-only numbers of one attribution ``a`` (masks over the context tokens)."""
    a = a.clamp(min=0)
    passage = support | distractor
    mass = float((a * passage).sum())
    total = float(a.sum())
    top = int(torch.argmax(torch.where(passage, a, torch.full_like(a, -1.0))))
    return {
        "passage_dsa": mt.dsa(a * passage, support, distractor),  # SPEC §5's DSA with the rest of the context zeroed
        "top_is_answer": bool(gold[top]) and mass > 0,
        "top_in_support": bool(support[top]) and mass > 0,
        "outside_share": 1 - mass / total if total > 0 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "evidence_qa.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--slice", default="all", help="report slice (all, gold_top1, greedy)")
    ap.add_argument("--methods", nargs="+", default=["heta_default"], help="paired against every other method")
    args = ap.parse_args()
    torch.set_num_threads(1)
    examples = {ex.id: ex for ex in load_examples(args.data)}
    _, tokenizer = load_model(args.model)
    records = slice_records(load_records(list(examples.values()), args.out, RunSettings(model=args.model)), args.slice)
    rows: dict[str, dict[str, dict]] = {}  # method -> example id -> passage view
    for rec in records:
        ex = examples[rec["id"]]
        enc = encode(tokenizer, ex)
        support = mt.token_span_mask(enc.offsets, enc.text, ex.support)
        distractor = mt.token_span_mask(enc.offsets, enc.text, ex.distractor)
        gold = mt.token_span_mask(enc.offsets, enc.text, ex.gold)
        for method, r in rec["methods"].items():
            scores = torch.tensor(r["scores"], dtype=torch.float64)
            if scores.numel() != len(enc.ids):
                raise SystemExit(f"{rec['id']} {method}: {scores.numel()} scores for {len(enc.ids)} tokens")
            rows.setdefault(method, {})[rec["id"]] = passage_view(scores, support, distractor, gold)
    lines = [f"# Inside the passage: {Path(args.data).name}, model {args.model}, slice `{args.slice}`", "",
             "Post-hoc view (benchmarks/eval/within_passage.py): scores over the passage tokens only. DSA over the "
             "whole context is in summary.md.", "",
             "| method | n | passage DSA ↑ | top = answer | top in support | share outside the passage (question, cue) |", "|---|---|---|---|---|---|"]
    for method, by_id in rows.items():
        v = list(by_id.values())
        m, se, _ = mt.mean_sem([x["passage_dsa"] for x in v])
        outside = sum(x["outside_share"] for x in v) / len(v)
        lines.append(f"| {method} | {len(v)} | {m:+.3f} ± {se:.3f} | {sum(x['top_is_answer'] for x in v)}/{len(v)} | "
                     f"{sum(x['top_in_support'] for x in v)}/{len(v)} | {outside:.3f} |")
    lines += ["", "Paired passage DSA, method − baseline (wins = examples where the method is higher):", "",
              "| method | baseline | n | difference | wins |", "|---|---|---|---|---|"]
    for method in args.methods:
        for base in rows:
            if base == method or method not in rows:
                continue
            ids = [i for i in rows[method] if i in rows[base]]
            if len(ids) < 2:
                continue
            d = [rows[method][i]["passage_dsa"] - rows[base][i]["passage_dsa"] for i in ids]
            m, se, _ = mt.mean_sem(d)
            lines.append(f"| {method} | {base} | {len(ids)} | {m:+.3f} ± {se:.3f} | {sum(x > 0 for x in d)}/{len(ids)} |")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "within_passage.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
