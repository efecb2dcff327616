"""LongRA in the evaluation harness's example schema (heta_fast/evaluation/data.py), for `heta-fast eval curated`.

    python benchmarks/eval/data/reagent/to_harness.py      # writes longra_harness.jsonl beside this file

Each LongRA record (longra.jsonl, see README.md) becomes one example: the passage as `text` with no cue (the
model continues it: its own next token is the paper's target, `--targets greedy`), the human rationale (the
antecedent) as the support segment and as the gold words (`f1` is then top-k agreement with the rationale,
`support_share` the attribution mass on it), the distractor clause as the distractor segment, and the
analogy's answer word as `answer` (the `gold` target: its first token).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def harness_example(rec: dict) -> dict:
    return {
        "id": rec["id"],
        "text": rec["text"],
        "answer": rec["target_word"],
        "cue": "",
        "support_spans": rec["rationale_spans"],
        "distractor_spans": [rec["distractor_span"]],
        "important_spans": rec["rationale_spans"],
        "analogy_type": rec["analogy_type"],
    }


def main() -> None:
    src = HERE / "longra.jsonl"
    out = HERE / "longra_harness.jsonl"
    rows = [harness_example(json.loads(line)) for line in src.read_text(encoding="utf-8").splitlines() if line]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {out} ({len(rows)} examples)")


if __name__ == "__main__":
    main()
