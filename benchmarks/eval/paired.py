"""Paired differences per example: ``method - baseline`` of one metric, per report slice, with standard
errors and win counts (the mean ± SE tables of summary.md cannot say whether one method beats another on
the same examples).

    python benchmarks/eval/paired.py OUT [--data PATH] [--metric dsa] [--methods heta_default heta_exact]
        [--split-by KEY]

``--split-by support_first`` (any key of the data's JSON lines) repeats the tables for each value of that key,
e.g. whether the differences depend on where the support sentence sits; written to ``paired_by_KEY.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from heta_fast.evaluation.curated import SLICES, RunSettings, load_records, slice_records
from heta_fast.evaluation.data import load_examples
from heta_fast.evaluation.metrics import mean_sem


def _tables(records, metrics, methods, heading="") -> list[str]:
    lines = []
    for metric in metrics:
        lower_better = metric.startswith("sufficiency")
        for name, *_ in SLICES:
            recs = slice_records(records, name)
            if not recs:
                continue
            lines += ["", f"### {metric}, slice `{name}`{heading}", "", "| method | baseline | n | difference | wins |",
                      "|---|---|---|---|---|"]
            for m in methods:
                baselines = [b for b in recs[0]["methods"] if b != m and b not in methods or
                             (b in methods and b != m)]
                for b in baselines:
                    pairs = [(r["methods"][m][metric], r["methods"][b][metric]) for r in recs
                             if m in r["methods"] and b in r["methods"] and not any(math.isnan(x) for x in
                             (r["methods"][m][metric], r["methods"][b][metric]))]
                    if len(pairs) < 2:
                        continue
                    d = [x - y for x, y in pairs]
                    mean, sem, _ = mean_sem(d)
                    wins = sum((x < y) if lower_better else (x > y) for x, y in pairs)
                    lines.append(f"| {m} | {b} | {len(pairs)} | {mean:+.3f} ± {sem:.3f} | {wins}/{len(pairs)} |")
    return lines


def _data_values(path: str, key: str) -> dict[str, object]:
    """Example id -> the value of ``key`` in the data file's JSON lines (the loader keeps only what it scores)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [r.get("id") for r in rows if key not in r]
    if missing:
        raise SystemExit(f"--split-by {key}: not a key of examples {missing[:5]} in {path}")
    return {str(r["id"]): r[key] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "evidence_qa.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--metric", nargs="+", default=["dsa", "soft_nc", "comprehensiveness", "sufficiency"])
    ap.add_argument("--methods", nargs="+", default=["heta_default", "heta_exact"])
    ap.add_argument("--split-by", help="repeat the tables per value of this key of the data's JSON lines")
    args = ap.parse_args()
    records = load_records(load_examples(args.data), args.out, RunSettings(model=args.model))
    lines = [f"Paired per-example differences, method − baseline (mean ± standard error; wins = examples where the "
             f"method is better{'; sufficiency: lower is better' if 'sufficiency' in args.metric else ''})."]
    if args.split_by:
        value_of = _data_values(args.data, args.split_by)
        for value in sorted({value_of[r["id"]] for r in records}, key=str):
            group = [r for r in records if value_of[r["id"]] == value]
            lines += _tables(group, args.metric, args.methods, f", {args.split_by} = {value}")
        name = f"paired_by_{args.split_by}.md"
    else:
        lines += _tables(records, args.metric, args.methods)
        name = "paired.md"
    text = "\n".join(lines) + "\n"
    (Path(args.out) / name).write_text(text, encoding="utf-8")
    print(text)

if __name__ == "__main__":
    main()
