"""Greedy-answer targets, report slices and rephrase alignment (tiny random models, CharTokenizer)."""

import csv
import json

import pytest
import torch

from heta_fast import Attributor
from heta_fast.errors import HetaInputError
from heta_fast.evaluation import curated as cur
from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.data import load_examples
from heta_fast.evaluation.rephrase import align, rephrase_spearman, word_scores, words
from heta_fast.models import tiny_model
from heta_fast.testing import CharTokenizer


class AnswerWithoutSpaceTokenizer(CharTokenizer):
    """Answers (tokenised without special tokens, as ``" " + answer``) lose their leading space, so the gold
    token is the answer's first character and a test can make it the model's greedy token."""

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        if not add_special_tokens:
            text = text.lstrip(" ")
        return super().__call__(text, add_special_tokens, return_offsets_mapping)


def _char_for(token_id: int) -> str:
    """The character CharTokenizer encodes as ``token_id`` (ids are 1 + ord(c) % 90)."""
    code = token_id - 1
    return chr(code if code >= 32 else code + 90)


def _rows(answers):
    rows = []
    for i, ans in enumerate(answers):
        dis, sup = f"Tom ate {i} pears.", f"Tom owns a red cat {i}."
        text = f"{dis} {sup}\nQuestion: what does Tom own?"
        rows.append({"id": f"ex{i}", "text": text, "answer": ans, "cue": "\nAnswer: Tom owns a",
                     "support_span": [text.index(sup), text.index(sup) + len(sup)],
                     "distractor_span": [0, len(dis)]})
    return rows


def _greedy_id(attr, prompt):
    ids = attr.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        return int(attr.adapter.model(torch.tensor([ids])).logits[0, -1].argmax())


def test_prediction_facts_on_a_known_distribution():
    logp = torch.log(torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64))
    facts = cur.prediction_facts(lambda X: logp.expand(X.shape[0], 3), torch.zeros(4, 2), gold_id=2)
    assert facts == {"greedy_id": 1, "p_greedy": pytest.approx(0.6), "p_gold": pytest.approx(0.3),
                     "gold_rank": 2, "gold_is_top1": False}
    assert cur.prediction_facts(lambda X: logp.expand(X.shape[0], 3), torch.zeros(4, 2), gold_id=1)["gold_is_top1"]
    enc = cur.Encoded([5, 6], [(0, 1), (1, 2)], "ab", 2)
    assert cur.with_target(enc, "greedy", facts).target_id == 1 and cur.with_target(enc, "gold", facts) is enc
    with pytest.raises(HetaInputError, match="unknown target"):
        cur.with_target(enc, "sampled", facts)


def test_runner_explains_the_greedy_answer_and_copies_it_where_it_is_the_gold_token(tmp_path, monkeypatch):
    attr = Attributor(tiny_model("llama"), AnswerWithoutSpaceTokenizer())
    prompt = _rows(["x"])[0]["text"] + "\nAnswer: Tom owns a"
    hit = _char_for(_greedy_id(attr, prompt))  # ex0's answer starts with the model's own greedy token
    miss = next(c for c in "qzjk" if 1 + ord(c) % 90 != _greedy_id(attr, prompt.replace("ate 0", "ate 1")))
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows([hit + "at", miss + "oo"])))
    exs = load_examples(path)
    settings = cur.RunSettings(soft_samples=1, ig_steps=2)
    methods = ["random", "grad_norm", "loo"]
    recs = cur.run_curated(exs, tmp_path / "out", methods, settings, targets=("gold", "greedy"),
                           attributor=attr, progress=False)
    assert [(r["id"], r["target"]) for r in recs] == [("ex0", "gold"), ("ex0", "greedy"), ("ex1", "gold"),
                                                       ("ex1", "greedy")]
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    by = {(r["id"], r["target"]): r for r in lines}
    for ex in exs:  # the greedy target is the argmax after the cue, computed here independently
        assert by[(ex.id, "greedy")]["target_id"] == _greedy_id(attr, ex.prompt())
    assert recs[0]["gold_is_top1"] and not recs[2]["gold_is_top1"]
    assert by[("ex0", "greedy")]["methods"] == by[("ex0", "gold")]["methods"]  # same target: copied
    # ex1's greedy token is not its gold token: its scores are those of the greedy token.
    enc = cur.encode(attr.tokenizer, exs[1])
    ids = torch.tensor(enc.ids)
    g = by[("ex1", "greedy")]["target_id"]
    assert g != by[("ex1", "gold")]["target_id"]
    expect = cur.baseline_scores("grad_norm", attr.adapter, ids, g).tolist()
    assert by[("ex1", "greedy")]["methods"]["grad_norm"]["scores"] == pytest.approx(expect, rel=1e-6)
    X = attr.adapter.embed(ids)
    assert by[("ex1", "greedy")]["methods"]["grad_norm"]["p_target"] == pytest.approx(
        float(mt.model_logprob_fn(attr.adapter)(X[None])[0, g].exp()), rel=1e-6)

    # A rerun computes nothing.
    def boom(*a, **k):
        raise AssertionError("recomputed a finished record")

    monkeypatch.setattr(cur, "method_scores", boom)
    again = cur.run_curated(exs, tmp_path / "out", methods, settings, targets=("gold", "greedy"),
                            attributor=attr, progress=False)
    assert json.dumps([r["methods"] for r in again]) == json.dumps([r["methods"] for r in recs])  # NaN-safe


def test_slices_and_report(tmp_path):
    def rec(i, target, top1, dsa):
        return {"id": f"e{i}", "target": target, "gold_is_top1": top1, "p_gold": 0.5, "p_greedy": 0.6,
                "gold_rank": 1 if top1 else 3, "gold_token": " a", "greedy_token": " a" if top1 else " b",
                "methods": {"loo": {"dsa": dsa}}}

    recs = [rec(0, "gold", True, 0.5), rec(0, "greedy", True, 0.5), rec(1, "gold", False, -0.1),
            rec(1, "greedy", False, 0.3), {"id": "old", "gold_is_top1": False, "methods": {"loo": {"dsa": 0.0}}}]
    assert [r["id"] for r in cur.slice_records(recs, "all")] == ["e0", "e1", "old"]  # no target = gold
    assert [r["id"] for r in cur.slice_records(recs, "gold_top1")] == ["e0"]
    assert [r["methods"]["loo"]["dsa"] for r in cur.slice_records(recs, "greedy")] == [0.5, 0.3]
    with pytest.raises(HetaInputError, match="unknown slice"):
        cur.slice_records(recs, "best")
    slices = cur.summarize_slices(recs, ["loo"])
    assert slices["all"][0]["n"] == 3 and slices["all"][0]["dsa"] == pytest.approx(0.4 / 3)
    assert slices["gold_top1"][0]["n"] == 1 and slices["greedy"][0]["dsa"] == pytest.approx(0.4)
    cur.write_report(slices, tmp_path, plots=False, records=recs[:4], title="t")
    md = (tmp_path / "summary.md").read_text()
    assert md.count("## Slice") == 3 and "`gold_top1`" in md
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["slice"] for r in rows] == ["all", "gold_top1", "greedy"]
    targets = list(csv.DictReader((tmp_path / "targets.csv").open()))
    assert [(t["id"], t["greedy_token"]) for t in targets] == [("e0", " a"), ("e1", " b")]


def test_rephrase_alignment_pairs_repeated_words_in_order():
    assert [w for w, *_ in words("The cat, the (red) cat!")] == ["the", "cat", "the", "red", "cat"]
    assert align(["the", "cat", "the", "dog"], ["a", "the", "dog", "the"]) == [(0, 1), (2, 3), (3, 2)]
    tok = CharTokenizer()
    text = "Ann has a dog. Ann walks it."
    enc = tok(text, return_offsets_mapping=True)
    scores = torch.arange(len(enc["input_ids"]), dtype=torch.float64)
    names, vals = word_scores(text, enc["offset_mapping"], scores)
    assert names[:3] == ["ann", "has", "a"] and vals[0] == pytest.approx(1 + 2 + 3)  # BOS (0) is in no word
    para = "Ann walks it. Ann has a dog."  # the same words in another order
    enc_b = tok(para, return_offsets_mapping=True)
    same = rephrase_spearman(text, enc["offset_mapping"], scores, text, enc["offset_mapping"], scores)
    assert same["rho"] == pytest.approx(1.0) and same["shared"] == 7
    # In the paraphrase, every character of a word scores that word's position in the original (1st
    # "ann" = 0, "has" = 1, ...): the shared words keep the original's order of word sums only where the
    # word lengths agree, so compare with word sums built the same way.
    order = {("ann", 0): 0, ("has", 0): 1, ("a", 0): 2, ("dog", 0): 3, ("ann", 1): 4, ("walks", 0): 5, ("it", 0): 6}
    seen, per_char = {}, torch.zeros(len(enc_b["input_ids"]), dtype=torch.float64)
    for w, s0, e0 in words(para):
        k = seen.get(w, 0)
        seen[w] = k + 1
        per_char[1 + s0 : 1 + e0] = order[(w, k)] / (e0 - s0)  # +1: the BOS token
    word_sum = torch.zeros(len(enc["input_ids"]), dtype=torch.float64)
    seen = {}
    for w, s0, e0 in words(text):
        k = seen.get(w, 0)
        seen[w] = k + 1
        word_sum[1 + s0 : 1 + e0] = order[(w, k)] / (e0 - s0)
    moved = rephrase_spearman(text, enc["offset_mapping"], word_sum, para, enc_b["offset_mapping"], per_char)
    assert moved["rho"] == pytest.approx(1.0) and moved["shared"] == 7
    flat = rephrase_spearman(text, enc["offset_mapping"], scores, para, enc_b["offset_mapping"],
                             torch.zeros(len(enc_b["input_ids"])))
    assert flat["shared"] == 7 and flat["rho"] != flat["rho"]  # constant side: NaN


def test_report_only_reads_finished_records_without_a_model(tmp_path):
    settings = cur.RunSettings()
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows(["cat", "dog"])))
    exs = load_examples(path)
    facts = {"greedy_id": 5, "p_greedy": 0.4, "p_gold": 0.4, "gold_rank": 1, "gold_is_top1": True}
    lines = [{"id": "ex1", "target": t, "settings": settings.key(), **facts, "methods": {"loo": {"dsa": 0.2}}}
             for t in ("gold", "greedy")]
    lines.append({"id": "ex1", "settings": {**settings.key(), "seed": 7}, "methods": {"loo": {"dsa": 9.0}}})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    recs = cur.load_records(exs, tmp_path, settings)
    assert [(r["id"], r["target"], r["gold_is_top1"]) for r in recs] == [("ex1", "gold", True), ("ex1", "greedy", True)]
    assert recs[0]["methods"] == {"loo": {"dsa": 0.2}}  # the line with other settings is ignored
