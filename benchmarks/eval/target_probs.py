"""p(gold answer's first token), its rank and the model's greedy token for every example of a data set
(one forward each, no attribution): does the model predict the answers we explain?

    python benchmarks/eval/target_probs.py --model default --data benchmarks/eval/data/evidence_qa.jsonl --out FILE.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics

import torch

from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.curated import encode, prediction_facts
from heta_fast.evaluation.data import load_examples
from heta_fast.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from heta_fast.hf import ModelAdapter

    model, tok = load_model(args.model)
    adapter = ModelAdapter(model)
    fn = mt.model_logprob_fn(adapter)
    rows = []
    for ex in load_examples(args.data):
        enc = encode(tok, ex)
        facts = prediction_facts(fn, adapter.embed(torch.tensor(enc.ids)).detach(), enc.target_id, tok)
        rows.append({"id": ex.id, "n_tokens": len(enc.ids), **facts})
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "n_tokens", "gold_token", "p_gold", "gold_rank", "gold_is_top1",
                                          "greedy_token", "p_greedy"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "p_gold": f"{r['p_gold']:.4g}", "p_greedy": f"{r['p_greedy']:.4g}"})
    ps = [r["p_gold"] for r in rows]
    print(f"{args.model} on {args.data}: n = {len(rows)}, median p(gold) = {statistics.median(ps):.3f}, "
          f"min {min(ps):.3g}, gold is top-1 on {sum(r['gold_is_top1'] for r in rows)}")


if __name__ == "__main__":
    main()
