"""Stability across decoding settings: the attribution of a sampled answer against that of the greedy answer.

For each example, the first answer token after the cue is drawn ``--samples`` times under each decoding
setting (temperature T, nucleus top-p), with a fixed seed. A draw equal to the greedy token has exactly
the greedy attribution (same target, same seed: ρ = 1). A draw that differs is explained afresh and its
scores compared with the greedy token's by Spearman ρ over the context tokens. Reported per setting and
method: the share of draws equal to greedy, ρ over the differing draws, and ρ over all draws (identical
draws counted as 1). The greedy scores are read from a runner output folder (``--targets greedy``).

    python benchmarks/eval/decoding_stability.py --results OUT [--model default] [--n 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from heta_fast import Attributor
from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.curated import Encoded, RunSettings, encode, method_scores, prediction_facts
from heta_fast.evaluation.data import load_examples

SETTINGS = ((0.7, 0.9), (1.0, 0.95))


def sample_token(logp: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """One draw from softmax(logp / T) restricted to the smallest set of tokens with mass >= top_p."""
    p = torch.softmax(logp.double() / temperature, -1)
    ps, order = torch.sort(p, descending=True)
    keep = int((torch.cumsum(ps, 0) < top_p).sum()) + 1  # the token that crosses top_p is kept
    ps = ps[:keep] / ps[:keep].sum()
    return int(order[torch.multinomial(ps, 1, generator=gen)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="runner output folder with greedy-target records")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "evidence_qa.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+",
                    default=["grad_norm", "input_x_grad", "integrated_gradients", "loo", "heta_fast"])
    ap.add_argument("--out", help="folder for decoding.md / decoding.json (default: --results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    greedy = {}
    for line in (Path(args.results) / "results.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line.strip() else None
        if rec and rec.get("target") == "greedy":
            greedy.setdefault(rec["id"], {}).update(rec["methods"])
    attributor = Attributor.from_pretrained(args.model)
    logprob_fn = mt.model_logprob_fn(attributor.adapter)
    settings = RunSettings(model=args.model, seed=args.seed)
    rows = []
    examples = [e for e in load_examples(args.data) if e.id in greedy and all(m in greedy[e.id] for m in args.methods)]
    for i, ex in enumerate(examples[: args.n]):
        enc = encode(attributor.tokenizer, ex)
        X = attributor.adapter.embed(torch.tensor(enc.ids)).detach()
        facts = prediction_facts(logprob_fn, X, enc.target_id)
        logp = logprob_fn(X[None])[0]
        gen = torch.Generator().manual_seed(args.seed * 1000 + i)
        cache: dict[int, dict] = {}
        for T, top_p in SETTINGS:
            for s in range(args.samples):
                tok = sample_token(logp, T, top_p, gen)
                row = {"id": ex.id, "T": T, "top_p": top_p, "draw": s, "token": attributor.tokenizer.decode([tok]),
                       "same_as_greedy": tok == facts["greedy_id"], "rho": {}}
                if tok == facts["greedy_id"]:
                    row["rho"] = {m: 1.0 for m in args.methods}
                else:
                    if tok not in cache:
                        alt = Encoded(enc.ids, enc.offsets, enc.text, tok, kind="sampled")
                        cache[tok] = method_scores(attributor, alt, args.methods, settings)[0]
                    row["rho"] = {m: mt.spearman(greedy[ex.id][m]["scores"], cache[tok][m]) for m in args.methods}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "rho"}),
                      {m: round(v, 3) for m, v in row["rho"].items()}, flush=True)
    lines = [f"Stability across decoding settings (model {args.model}, {len(set(r['id'] for r in rows))} examples, "
             f"{args.samples} draws per setting): Spearman ρ between the attribution of the sampled first answer "
             "token and that of the greedy one.", "",
             "| T | top-p | draws | = greedy | method | ρ, differing draws ↑ | ρ, all draws ↑ |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for T, top_p in SETTINGS:
        sel = [r for r in rows if r["T"] == T and r["top_p"] == top_p]
        same = sum(r["same_as_greedy"] for r in sel)
        for m in args.methods:
            d = mt.mean_sem([r["rho"][m] for r in sel if not r["same_as_greedy"]])
            a = mt.mean_sem([r["rho"][m] for r in sel])
            summary.append({"T": T, "top_p": top_p, "draws": len(sel), "same": same, "method": m,
                            "rho_differing": d, "rho_all": a})
            lines.append(f"| {T} | {top_p} | {len(sel)} | {same} | {m} | {d[0]:.3f} ± {d[1]:.3f} (n={d[2]}) | "
                         f"{a[0]:.3f} ± {a[1]:.3f} |")
    out = Path(args.out or args.results)
    (out / "decoding.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "decoding.json").write_text(json.dumps({"summary": summary, "draws": rows}, indent=1) + "\n",
                                       encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
