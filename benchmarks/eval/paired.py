"""Paired differences per example: ``method - baseline`` of one metric, per report slice, with standard
errors and win counts (the mean ± SE tables of summary.md cannot say whether one method beats another on
the same examples).

    python benchmarks/eval/paired.py OUT [--data PATH] [--metric dsa] [--methods heta_default heta_exact]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from heta_fast.evaluation.curated import SLICES, RunSettings, load_records, slice_records
from heta_fast.evaluation.data import load_examples


def _mean_sem(v):
    n = len(v)
    m = sum(v) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1) / n) if n > 1 else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "evidence_qa.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--metric", nargs="+", default=["dsa", "soft_nc", "comprehensiveness", "sufficiency"])
    ap.add_argument("--methods", nargs="+", default=["heta_default", "heta_exact"])
    args = ap.parse_args()
    records = load_records(load_examples(args.data), args.out, RunSettings(model=args.model))
    lines = [f"Paired per-example differences, method − baseline (mean ± standard error; wins = examples where the "
             f"method is better{'; sufficiency: lower is better' if 'sufficiency' in args.metric else ''})."]
    for metric in args.metric:
        lower_better = metric.startswith("sufficiency")
        for name, *_ in SLICES:
            recs = slice_records(records, name)
            if not recs:
                continue
            lines += ["", f"### {metric}, slice `{name}`", "", "| method | baseline | n | difference | wins |",
                      "|---|---|---|---|---|"]
            for m in args.methods:
                baselines = [b for b in recs[0]["methods"] if b != m and b not in args.methods or
                             (b in args.methods and b != m)]
                for b in baselines:
                    pairs = [(r["methods"][m][metric], r["methods"][b][metric]) for r in recs
                             if m in r["methods"] and b in r["methods"] and not any(math.isnan(x) for x in
                             (r["methods"][m][metric], r["methods"][b][metric]))]
                    if len(pairs) < 2:
                        continue
                    d = [x - y for x, y in pairs]
                    mean, sem = _mean_sem(d)
                    wins = sum((x < y) if lower_better else (x > y) for x, y in pairs)
                    lines.append(f"| {m} | {b} | {len(pairs)} | {mean:+.3f} ± {sem:.3f} | {wins}/{len(pairs)} |")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "paired.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
