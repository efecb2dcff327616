"""Sequence-level results per prompt, as the ReAGent authors summarise them (issue 30).

    python benchmarks/eval/per_prompt.py OUT --data OUT/examples.jsonl [--model default] [--baseline heta_default]

For examples written by ``data/reagent/sequence_harness.py`` (several generated positions per prompt, each an
example with ``prompt_id``): each method's Soft-NC and Soft-NS averaged over a prompt's positions (the authors'
``{i}_mean.csv``), then over prompts (mean ± standard error, n = prompts), the authors' summary
``log(Σ_prompts method mean / Σ_prompts random mean)`` (`summarise_sequencelevel.py`; needs the ``random``
method), and the baseline method minus each other method per prompt (mean ± SE, wins). Only prompts whose every
position has the method count for it. Written to ``OUT/per_prompt.md``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from pathlib import Path

from heta_fast.evaluation.curated import RunSettings, load_records
from heta_fast.evaluation.data import load_examples
from heta_fast.evaluation.metrics import mean_sem

METRICS = ("soft_nc", "soft_ns")


def prompt_means(records: list[dict], prompt_of: dict[str, str], positions: dict[str, int]) -> dict:
    """{method: {metric: {prompt: mean over its positions}}}, for prompts with every position done."""
    per: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        for m, vals in r["methods"].items():
            for metric in METRICS:
                v = vals.get(metric)
                if v is not None and not math.isnan(v):
                    per[m][metric][prompt_of[r["id"]]].append(v)
    return {m: {metric: {p: sum(v) / len(v) for p, v in metrics[metric].items() if len(v) == positions[p]}
                for metric in METRICS} for m, metrics in per.items()}


def report(means: dict, baseline: str) -> list[str]:
    methods = list(means)  # the run's order
    lines = ["| method | prompts | Soft-NC | Soft-NS | log(Σ/Σ random) NC | log(Σ/Σ random) NS |",
             "|---|---|---|---|---|---|"]
    for m in methods:
        cells, logs = [], []
        for metric in METRICS:
            mean, sem, _ = mean_sem(list(means[m][metric].values()))
            cells.append(f"{mean:.3f} ± {sem:.3f}")
            rand = means.get("random", {}).get(metric, {})
            common = [p for p in means[m][metric] if p in rand]
            num, den = sum(means[m][metric][p] for p in common), sum(rand[p] for p in common)
            logs.append(f"{math.log(num / den):+.3f}" if common and num > 0 and den > 0 else "–")
        lines.append(f"| {m} | {len(means[m]['soft_nc'])} | {cells[0]} | {cells[1]} | {logs[0]} | {logs[1]} |")
    if baseline in means:
        lines += ["", f"Per prompt, {baseline} minus each method (mean ± SE over prompts, wins):", "",
                  "| method | prompts | Soft-NC difference | wins | Soft-NS difference | wins |",
                  "|---|---|---|---|---|---|"]
        for m in methods:
            if m == baseline:
                continue
            cells, counts = [], []
            for metric in METRICS:
                a, b = means[baseline][metric], means[m][metric]
                d = [a[p] - b[p] for p in a if p in b]
                mean, sem, n = mean_sem(d)
                cells += [f"{mean:+.3f} ± {sem:.3f}", f"{sum(x > 0 for x in d)}/{len(d)}"]
                counts.append(str(n))
            lines.append(f"| {m} | {' / '.join(dict.fromkeys(counts))} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--data", required=True, help="the examples file the run used (with prompt_id per example)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--baseline", default="heta_default")
    args = ap.parse_args()
    from paired import _data_values  # beside this script

    prompt_of = _data_values(args.data, "prompt_id")
    positions = Counter(prompt_of.values())
    records = load_records(load_examples(args.data), args.out, RunSettings(model=args.model), targets=("greedy",))
    lines = [f"Sequence level, {len(records)} positions of {len({prompt_of[r['id']] for r in records})} prompts "
             "(model's own next token); per-prompt means over each prompt's positions, then over prompts.", ""]
    lines += report(prompt_means(records, prompt_of, positions), args.baseline)
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "per_prompt.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
