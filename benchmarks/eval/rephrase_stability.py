"""Stability across rephrasings: Spearman ρ, over the words both versions share, between the attribution
of an example and that of its paraphrase (question and passage reworded, same cue and answer).

Both versions must have been evaluated by ``heta-fast eval curated`` (the runner stores every method's
scores); this script only re-tokenises the prompts for their offsets and compares (heta_fast.evaluation.
rephrase explains the word alignment).

    python benchmarks/eval/rephrase_stability.py --orig OUT_ORIG --para OUT_PARA --out OUT_ORIG [--model default]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heta_fast.evaluation.curated import encode
from heta_fast.evaluation.data import load_examples
from heta_fast.evaluation.metrics import mean_sem
from heta_fast.evaluation.rephrase import rephrase_spearman

DATA = Path(__file__).parent / "data"


def _records(folder: Path, target: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("target", "gold") == target:
                out.setdefault(rec["id"], {}).update(rec["methods"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orig", required=True, help="runner output folder of the original examples")
    ap.add_argument("--para", required=True, help="runner output folder of the paraphrases")
    ap.add_argument("--data-orig", default=str(DATA / "evidence_qa.jsonl"))
    ap.add_argument("--data-para", default=str(DATA / "evidence_qa_paraphrase.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--target", default="gold", choices=["gold", "greedy"])
    ap.add_argument("--out", required=True, help="folder for rephrase.md / rephrase.json")
    args = ap.parse_args()
    from heta_fast.models import load_model

    _, tok = load_model(args.model)
    orig = {e.id: e for e in load_examples(args.data_orig)}
    para = {e.id: e for e in load_examples(args.data_para)}
    ra, rb = _records(Path(args.orig), args.target), _records(Path(args.para), args.target)
    per: dict[str, list[dict]] = {}
    for eid in [i for i in para if i in orig and i in ra and i in rb]:
        ea, eb = encode(tok, orig[eid]), encode(tok, para[eid])
        assert ea.target_id == eb.target_id, f"{eid}: the paraphrase changes the target token"
        for m in ra[eid]:
            if m in rb[eid]:
                r = rephrase_spearman(ea.text, ea.offsets, ra[eid][m]["scores"], eb.text, eb.offsets,
                                      rb[eid][m]["scores"])
                per.setdefault(m, []).append({"id": eid, **r})
    lines = [f"Spearman ρ across rephrasings (model {args.model}, target {args.target}); words shared by both "
             "versions, k-th occurrence paired with k-th.", "",
             "| method | n pairs | ρ rephrase ↑ | shared words / words (orig) |", "|---|---|---|---|"]
    summary = {}
    for m, rows in per.items():
        mean, sem, n = mean_sem([r["rho"] for r in rows])
        share = sum(r["shared"] for r in rows) / max(1, sum(r["words_a"] for r in rows))
        summary[m] = {"rho": mean, "sem": sem, "n": n, "shared_fraction": share, "per_example": rows}
        lines.append(f"| {m} | {n} | {mean:.3f} ± {sem:.3f} | {share:.2f} |")
    out = Path(args.out)
    (out / "rephrase.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "rephrase.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
