"""Independent check of heta_fast's AOPC comprehensiveness/sufficiency against ferret-xai's (0.4.2).

ferret (github.com/g8a9/ferret) evaluates text classifiers: it re-tokenises text in which the top tokens
are replaced by the tokenizer's mask token. Here its evaluators run unchanged on a causal LM through a
thin helper: the "text" is the token ids written out, the "class" is the target token, the "logits" are
the next-token logits at the last position, and the mask token is an id whose embedding row is set to
zero — the erasure heta_fast's metrics use. Everything else (ranking, choosing the top k, averaging over
thresholds) is ferret's code.

Install ferret without its dependencies (they would pull transformers<5 and numpy<2); the evaluator
modules need only numpy, scipy, tqdm and transformers:

    .venv/bin/python -m pip install --no-deps ferret-xai==0.4.2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval/ferret_check.py [--model default] [--n 6]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

from heta_fast import Attributor
from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.baselines import baseline_scores
from heta_fast.evaluation.curated import encode, prompt_aligned
from heta_fast.evaluation.data import load_examples

ERASED = -1  # the "mask token": its embedding row is zero


def import_ferret_evaluators():
    """ferret's faithfulness evaluators, without ferret/__init__ (it imports lime, shap, datasets, ...)."""
    spec = importlib.util.find_spec("ferret")
    if spec is None or spec.submodule_search_locations is None:
        sys.exit("ferret-xai is not installed: pip install --no-deps ferret-xai==0.4.2")
    pkg = types.ModuleType("ferret")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["ferret"] = pkg
    fm = importlib.import_module("ferret.evaluators.faithfulness_measures")
    ex = importlib.import_module("ferret.explainers.explanation")
    return fm, ex


class IdTokenizer:
    """Text = token ids separated by spaces; ``mask_token_id`` marks an erased position."""

    mask_token_id = ERASED
    cls_token = None

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


class CausalLMHelper:
    """What ferret's evaluators call on their ``helper``: ``_tokenize`` and ``_forward`` (last-row logits)."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.tokenizer = IdTokenizer()

    def _tokenize(self, text, **_):
        ids = [int(x) for x in text.split()]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def _rows(self, text):
        ids = torch.tensor([int(x) for x in text.split()])
        X = self.adapter.embed(ids.clamp_min(0)).detach().clone()
        X[ids == ERASED] = 0
        return X

    def _forward(self, text, output_hidden_states=False, **_):
        texts = [text] if isinstance(text, str) else list(text)
        with torch.no_grad():
            logits = torch.stack([self.adapter.last_logits(self._rows(t)) for t in texts])
        return None, logits.float()


def _write(rows: list[dict], model: str, out: str, final: bool = False) -> None:
    dc = max(abs(r["ferret_comp"] - r["heta_comp_same_k"]) for r in rows)
    ds = max(abs(r["ferret_suff"] - r["heta_suff_same_k"]) for r in rows)
    dd = max(max(abs(r["ferret_comp"] - r["heta_comp_default"]), abs(r["ferret_suff"] - r["heta_suff_default"]))
             for r in rows)
    summary = {"model": model, "pairs": len(rows), "max_abs_diff_comp_same_k": dc,
               "max_abs_diff_suff_same_k": ds, "max_abs_diff_with_round_vs_floor": dd, "rows": rows}
    Path(out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if final:
        print(f"{len(rows)} (example, method) pairs: max |ferret - heta_fast| comp {dc:.2e}, suff {ds:.2e} "
              f"(same k); with heta_fast's own round(f*t) counts: {dd:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data" / "evidence_qa.jsonl"))
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).parent / "ferret_check.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    fm, ex_mod = import_ferret_evaluators()
    attributor = Attributor.from_pretrained(args.model)
    adapter = attributor.adapter
    helper = CausalLMHelper(adapter)
    comp_ev = fm.AOPC_Comprehensiveness_Evaluation.__new__(fm.AOPC_Comprehensiveness_Evaluation)
    suff_ev = fm.AOPC_Sufficiency_Evaluation.__new__(fm.AOPC_Sufficiency_Evaluation)
    comp_ev.helper = suff_ev.helper = helper  # BaseEvaluator.__init__ would build ferret's own ModelHelper
    logprob_fn = mt.model_logprob_fn(adapter)
    rows = []
    for ex in load_examples(args.data)[: args.n]:
        enc = encode(attributor.tokenizer, ex)
        ids = torch.tensor(enc.ids)
        X = adapter.embed(ids).detach()
        t = len(enc.ids)
        methods = {
            "random": baseline_scores("random", adapter, ids, enc.target_id, seed=0),
            "grad_norm": baseline_scores("grad_norm", adapter, ids, enc.target_id),
            "heta_fast": prompt_aligned(attributor.attribute(enc.ids + [enc.target_id], preset="fast").scores, t),
        }
        for name, a in methods.items():
            expl = ex_mod.Explanation(text=helper.tokenizer.decode(enc.ids), tokens=[str(i) for i in enc.ids],
                                      scores=a.numpy(), explainer=name, target=enc.target_id)
            for fractions in ((0.1, 0.2, 0.3),):
                # ferret takes floor(f*t) tokens, heta_fast round(f*t): give heta_fast the fractions that
                # pick ferret's counts, then also report the two conventions side by side.
                ks = [int(f * t) for f in fractions]
                same_k = [k / t for k in ks]
                # only_pos=True: ferret's only_pos=False path compares a numpy array with [] (fails on numpy
                # 2); with non-negative scores it only leaves out tokens scored exactly 0.
                kw = dict(remove_first_last=False, only_pos=True,
                          removal_args={"remove_tokens": False, "based_on": "perc", "thresholds": list(fractions)})
                f_comp = float(comp_ev.compute_evaluation(expl, target=enc.target_id, **kw).score)
                f_suff = float(suff_ev.compute_evaluation(expl, target=enc.target_id, **kw).score)
                ours_same = mt.aopc(logprob_fn, X, enc.target_id, a, fractions=same_k)
                ours_default = mt.aopc(logprob_fn, X, enc.target_id, a)
                rows.append({"id": ex.id, "method": name, "t": t, "k_ferret": ks,
                             "k_heta_default": [mt.topk_count(t, f) for f in fractions],
                             "ferret_comp": f_comp, "ferret_suff": f_suff,
                             "heta_comp_same_k": ours_same["comprehensiveness"],
                             "heta_suff_same_k": ours_same["sufficiency"],
                             "heta_comp_default": ours_default["comprehensiveness"],
                             "heta_suff_default": ours_default["sufficiency"]})
                r = rows[-1]
                _write(rows, attributor.name, args.out)  # after every pair: a stopped run keeps its rows
                print(f"{ex.id} {name:<10} t={t} k={ks} comp ferret {f_comp:+.6f} ours {r['heta_comp_same_k']:+.6f} "
                      f"| suff ferret {f_suff:+.6f} ours {r['heta_suff_same_k']:+.6f} "
                      f"| ours with round(f*t) comp {r['heta_comp_default']:+.6f} suff {r['heta_suff_default']:+.6f}")
    _write(rows, attributor.name, args.out, final=True)


if __name__ == "__main__":
    main()
