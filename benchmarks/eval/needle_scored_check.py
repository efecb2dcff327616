"""Did levels lose the needle, or would HETA's formula rank it below the same sentences anyway?

    python benchmarks/eval/needle_scored_check.py benchmarks/eval/needle_levels3_8k_amd_smollm2 [--row 0]

For a levelled ``heta_units`` run of ``needle.py`` that missed, rebuilds the case (same document, needle, depth,
distractor, options), and scores at one level, as the caller's spans, the sentences the run scored at its finest
level plus the needle and the distractor (the text between them becomes units too, so every position is covered as
SPEC §6 requires). Those sentences are then ranked by ``M_u (β S_u/ΣS + γ I_u/ΣI)`` with the sums over them alone,
as the finest level normalises: if the needle still ranks below sentences the run scored, its rank there is HETA's
formula, not the levels' choice. Writes ``scored_check_<row>.json`` beside the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from heta_fast import Attributor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import needle  # noqa: E402  (the harness beside this script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the needle.py output folder holding needle_results.jsonl")
    ap.add_argument("--row", type=int, default=0, help="which row of needle_results.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    row = json.loads((out / "needle_results.jsonl").read_text().splitlines()[args.row])
    summary = (out / "needle_summary.md").read_text().splitlines()[0]
    settings = json.loads(summary.split("Settings: ", 1)[1].split("; HETA options: ")[0])
    opts = json.loads(summary.split("; HETA options: ", 1)[1].rstrip("."))
    attr = Attributor.from_pretrained(settings["model"], progress=False)
    docs = needle.documents(None if settings["documents"] == "pydoc_data.topics" else settings["documents"])
    k, depth = row["needle"], row["depth"]
    prompt, sentences, case = needle.build_case(attr, docs, needle.NEEDLES, k, row["haystack_tokens"], depth,
                                                settings["distractors"])
    assert (case["needle_index"], case["sentences"]) == (row["needle_index"], row["sentences"]), "not the same case"
    ni, di = row["needle_index"], row["distractor_index"]
    scored = [i for i, v in enumerate(row["scores"]["heta_units"]) if v != 0.0]  # unscored sentences are stored as 0
    pick = sorted(set(scored) | {ni} | ({di} if di is not None else set()))
    answer_id = attr.tokenizer(needle.NEEDLES[k]["answer"], add_special_tokens=False)["input_ids"][0]
    t0 = time.perf_counter()
    res = attr.attribute(prompt, attr.tokenizer.decode([answer_id]), spans=[sentences[i] for i in pick],
                         **{**opts, "units": "spans", "coarse": "none"})[0]  # the run's options (and seed)
    seconds = time.perf_counter() - t0
    by_span = {u.char_span: u for u in res.units}
    M, S, I = ({i: getattr(by_span[tuple(sentences[i])], c) for i in pick} for c in "MSI")
    total_S, total_I = sum(S.values()), sum(I.values())
    score = {i: M[i] * (0.5 * S[i] / total_S + 0.5 * I[i] / total_I) for i in pick}
    order = sorted(pick, key=lambda i: -score[i])
    report = {"row": args.row, "needle_index": ni, "distractor_index": di, "scored_by_levels": scored,
              "needle_rank_among_these": order.index(ni) + 1, "of": len(pick), "seconds": round(seconds, 1),
              "sentences": [{"index": i, "M": M[i], "S": S[i], "I": I[i], "score": score[i],
                             "is": "needle" if i == ni else "distractor" if i == di else "scored by levels"}
                            for i in order]}
    (out / f"scored_check_{args.row}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"needle rank {report['needle_rank_among_these']} of {len(pick)} ({seconds:.0f} s)")
    for r, s in enumerate(report["sentences"], 1):
        print(f"{r:>3} {s['index']:>4} {s['is']:<17} M {s['M']:.4g}  S {s['S']:.4g}  I {s['I']:.4g}  score {s['score']:.4g}")


if __name__ == "__main__":
    main()
