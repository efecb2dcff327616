"""Evaluation metrics, baselines, sink treatment and the curated runner, on hand-made cases with known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from heta_fast import Attributor
from heta_fast.errors import HetaInputError
from heta_fast.evaluation import baselines as bl
from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.curated import RunSettings, parse_methods, run_curated, summarize, write_report
from heta_fast.evaluation.data import load_examples, parse_example
from heta_fast.hf import ModelAdapter
from heta_fast.testing import CharTokenizer, NoBosTokenizer, tiny_model

V, T, D = 5, 10, 3
W = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
                 dtype=torch.float64)


def only_token0(X):
    """A hand-made 'model': the logits depend on token 0's row only (log-softmax of W x_0)."""
    return torch.log_softmax(X[:, 0].double() @ W.T, -1)


@pytest.fixture
def X():
    return torch.randn(T, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 1.0


def onehot(i, t=T):
    a = torch.zeros(t, dtype=torch.float64)
    a[i] = 1.0
    return a


# ------------------------------------------------------------------------------------------- soft metrics
def _distance_by_hand(logp_ref, logp_new) -> float:
    """SPEC §5's D(π', π) = Σ_v (√π'_v − √π_v)² / √2, written out over Python floats."""
    return sum((math.sqrt(b) - math.sqrt(a)) ** 2 for a, b in zip(logp_ref.exp().tolist(),
                                                                   logp_new.exp().tolist())) / math.sqrt(2)


def test_distance_on_known_distributions():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).log()
    sq = (1 - math.sqrt(0.5)) ** 2 + 0.5  # Σ (√q - √p)²
    assert float(mt.sqrt_prob_distance(p, q)) == pytest.approx(sq / math.sqrt(2), abs=1e-12)
    assert float(mt.sqrt_prob_distance(p, p)) == pytest.approx(0.0)
    disjoint = torch.tensor([0.0, 1.0], dtype=torch.float64).log()
    assert float(mt.sqrt_prob_distance(q, disjoint)) == pytest.approx(math.sqrt(2))  # the largest D


def test_soft_erasure_known_answers(X):
    ref = only_token0(X[None])[0]
    uniform = torch.full((V,), 1.0 / V, dtype=torch.float64).log()  # all rows zeroed: W·0 = 0
    # Every term uses the same D (SPEC §5 since 2026-12): S_0 = 1 − D(π^all, π), not 1 − KL.
    s0 = 1 - _distance_by_hand(ref, uniform)
    # The right token: sufficiency keeps it entirely (π' = π), comprehensiveness removes it (π' = uniform).
    good = mt.soft_erasure(only_token0, X, onehot(0))
    assert good["s0"] == pytest.approx(s0)
    assert good["soft_s"] == pytest.approx(1.0) and good["soft_ns"] == pytest.approx(1.0)
    assert good["soft_c"] == pytest.approx(_distance_by_hand(ref, uniform))
    assert good["soft_nc"] == pytest.approx(1.0)  # Soft-C = 1 − S_0 exactly when comprehensiveness = all masked
    # A wrong token: sufficiency sees the uniform distribution (Soft-S = S_0), comprehensiveness changes nothing.
    bad = mt.soft_erasure(only_token0, X, onehot(4))
    assert bad["soft_s"] == pytest.approx(s0) and bad["soft_ns"] == pytest.approx(0.0)
    assert bad["soft_nc"] == pytest.approx(0.0)
    assert good["soft_ns"] > bad["soft_ns"] and good["soft_nc"] > bad["soft_nc"]
    # Scale and shift of the scores do not matter (min-max normalisation).
    assert mt.soft_erasure(only_token0, X, 3 * onehot(0) + 7) == good


def test_soft_erasure_partial_keep_is_seeded_and_between(X):
    a = torch.linspace(0, 1, T).flip(0)  # token 0 most important, but only 1 - 1/9 kept for others
    r1 = mt.soft_erasure(only_token0, X, a, seed=5)
    assert r1 == mt.soft_erasure(only_token0, X, a, seed=5)
    assert 0 <= r1["soft_nc"] <= mt.soft_erasure(only_token0, X, onehot(0))["soft_nc"] + 1e-12


def test_soft_erasure_degenerate_baseline_gives_nan(X):
    def constant(Xb):
        return torch.log_softmax(torch.zeros(Xb.shape[0], V, dtype=torch.float64), -1)

    r = mt.soft_erasure(constant, X, onehot(0))
    assert math.isnan(r["soft_nc"]) and math.isnan(r["soft_ns"])


def test_aopc_known_answers(X):
    p = float(only_token0(X[None])[0, 0].exp())
    target = 0
    good = mt.aopc(only_token0, X, target, onehot(0))
    assert good["comprehensiveness"] == pytest.approx(p - 1 / V)  # removing token 0 → uniform, at k = 1, 2, 3
    assert good["sufficiency"] == pytest.approx(0.0)
    assert good["comprehensiveness_logp"] == pytest.approx(math.log(p) - math.log(1 / V))
    assert good["sufficiency_logp"] == pytest.approx(0.0)
    worst = mt.aopc(only_token0, X, target, -onehot(0))  # token 0 ranked last: never in the top 30 %
    assert worst["comprehensiveness"] == pytest.approx(0.0)
    assert worst["sufficiency"] == pytest.approx(p - 1 / V)
    assert [mt.topk_count(T, f) for f in (0.1, 0.2, 0.3)] == [1, 2, 3]
    assert mt.topk_count(3, 0.1) == 1


# ------------------------------------------------------------------------------------ segments, DSA, F1
TEXT = "The leaves fell. <s> Photosynthesis occurs in leaves. <s> Question: where?"


def offsets_of(text):
    """Word-piece offsets like a byte-level BPE: each word carries its leading space."""
    import re

    return [(m.start(), m.end()) for m in re.finditer(r" ?\S+", text)]


def test_token_span_mask_uses_offsets_not_strings():
    offs = offsets_of(TEXT)
    dis = (0, TEXT.index(" <s>"))
    sup_start = TEXT.index("Photo")
    sup = (sup_start, TEXT.index(" <s>", sup_start))
    dmask = mt.token_span_mask(offs, TEXT, [dis])
    smask = mt.token_span_mask(offs, TEXT, [sup])
    toks = [TEXT[s:e] for s, e in offs]
    assert [t for t, m in zip(toks, dmask, strict=True) if m] == ["The", " leaves", " fell."]
    assert [t for t, m in zip(toks, smask, strict=True) if m] == [" Photosynthesis", " occurs", " in", " leaves."]
    # " leaves" occurs in both segments; each occurrence goes to its own segment only.
    assert not (dmask & smask).any()
    # A whitespace-only overlap is no membership.
    assert not mt.token_span_mask([(3, 4)], TEXT, [(3, 4)]).any()


def test_dsa_known_values_and_range():
    sup = torch.tensor([False, False, True, True])
    dis = torch.tensor([True, True, False, False])
    assert mt.dsa([1, 1, 1, 1], sup, dis) == pytest.approx(0.0)
    assert mt.dsa([0, 0, 2, 1], sup, dis) == pytest.approx(1.0)
    assert mt.dsa([3, 0, 0, 0], sup, dis) == pytest.approx(-1.0)
    assert mt.dsa([1, 0, 2, 0, 1][:4], sup, dis) == pytest.approx(2 / 3 - 1 / 3)
    with pytest.raises(HetaInputError, match="non-negative"):
        mt.dsa([-1, 0, 2, 0], sup, dis)
    with pytest.raises(HetaInputError, match="both"):
        mt.dsa([1, 1, 1, 1], sup, sup)


def test_f1_alignment_known_values():
    gold = torch.tensor([False, True, True, False, False])
    assert mt.f1_alignment([0, 5, 4, 1, 0], gold) == pytest.approx(1.0)
    assert mt.f1_alignment([0, 5, 1, 4, 0], gold) == pytest.approx(0.5)
    assert mt.f1_alignment([9, 0, 0, 8, 0], gold) == pytest.approx(0.0)
    with pytest.raises(HetaInputError):
        mt.f1_alignment([1, 2, 3, 4, 5], torch.zeros(5, dtype=torch.bool))


def test_spearman_known_values():
    assert mt.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mt.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert mt.rankdata(torch.tensor([5.0, 1.0, 5.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    # Ties: Pearson of ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4].
    ra, rb = torch.tensor([1, 2.5, 2.5, 4]), torch.tensor([1.0, 2, 3, 4])
    expect = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    assert mt.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(expect)
    assert math.isnan(mt.spearman([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------------------- baselines
@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    return model, ModelAdapter(model)


def _g(model, X, target):
    return float(torch.log_softmax(model(inputs_embeds=X[None]).logits[0, -1].double(), -1)[target])


def test_integrated_gradients_completeness():
    # GPT-2 adds position embeddings to X, so the path from X = 0 is smooth; on RMSNorm models the
    # normalisation of rows near zero makes g jump close to alpha = 0 and a Riemann sum misses it.
    model = tiny_model("gpt2")
    ad = ModelAdapter(model)
    ids = torch.tensor([3, 17, 42, 8, 60, 5])
    ig = bl.integrated_gradients(ad, ids, 11, steps=64, signed=True)
    with torch.no_grad():
        X = ad.embed(ids)
        expect = _g(model, X, 11) - _g(model, torch.zeros_like(X), 11)
    assert float(ig.sum()) == pytest.approx(expect, rel=2e-2, abs=1e-3)


def test_leave_one_out_matches_direct_forwards(tiny):
    model, ad = tiny
    ids = torch.tensor([3, 17, 42, 8, 60])
    loo = bl.leave_one_out(ad, ids, 11, batch_size=2, signed=True)
    with torch.no_grad():
        X = ad.embed(ids)
        for i in range(5):
            Xi = X.clone()
            Xi[i] = 0
            assert float(loo[i]) == pytest.approx(_g(model, X, 11) - _g(model, Xi, 11), abs=1e-4)
    assert (bl.leave_one_out(ad, ids, 11) >= 0).all()


def test_gradients_match_finite_differences(tiny):
    model, ad = tiny
    ids = torch.tensor([3, 17, 42, 8])
    X = ad.embed(ids).detach().double()
    grad = bl.target_logprob_grad(ad, ad.embed(ids), 11).double()
    v = torch.randn_like(X)
    eps = 1e-3
    with torch.no_grad():
        fd = (_g(model, (X + eps * v).float(), 11) - _g(model, (X - eps * v).float(), 11)) / (2 * eps)
    assert float((grad * v).sum()) == pytest.approx(fd, rel=2e-2, abs=1e-3)
    assert torch.allclose(bl.gradient_norm(ad, ids, 11), grad.norm(dim=-1), atol=1e-6)
    assert torch.allclose(bl.input_x_gradient(ad, ids, 11), (X * grad).sum(-1).abs(), atol=1e-5)


def test_attention_rollout_is_a_distribution(tiny):
    _, ad = tiny
    r = bl.attention_rollout(ad, torch.tensor([3, 17, 42, 8, 60]))
    assert (r >= 0).all() and float(r.sum()) == pytest.approx(1.0)
    assert float(r[-1]) >= 0.5 ** ad.num_layers  # the residual half of every layer stays at the last row


def test_perturbed_embeddings_is_scoped(tiny):
    _, ad = tiny
    ids = torch.tensor([3, 17, 42])
    noise = torch.ones(3, ad.hidden_size)
    clean = ad.embed(ids).clone()
    with bl.perturbed_embeddings(ad, ids, noise):
        assert torch.allclose(ad.embed(ids), clean + 1)
        assert torch.allclose(ad.embed(ids[:2]), clean[:2] + 1)
        assert torch.allclose(ad.embed(torch.tensor([5])), ad.embedding.weight[5:6])
    assert torch.equal(ad.embed(ids), clean)
    with pytest.raises(HetaInputError):
        bl.baseline_scores("nope", ad, ids, 1)


# ----------------------------------------------------------------------------------------- data + runner
def _rows(n=2):
    return [{"id": f"ex{i}", "text": f"Cat{i}. <s> Sun is hot. <s> Q?", "answer": "hot",
             "distractor": f"Cat{i}.", "support": "Sun is hot.", "important_words": ["hot", "Sun"]}
            for i in range(n)]


def _write_rows(tmp_path, n):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in _rows(n)))
    return p


def test_parse_example_released_format_and_gold_words():
    obj = {"input_text": "A story here. <s> Leaves of the plant, green. <s> Question: where?", "answer": "leaves",
           "narrative_segment": "A story here.", "sciq_support_segment": "Leaves of the plant, green.",
           "important_word_indices_in_sciq_support": [0, 3]}
    ex = parse_example(obj, 0)
    assert [ex.text[s:e] for s, e in ex.gold] == ["Leaves", "plant"]  # trailing comma trimmed
    assert [ex.text[s:e] for s, e in ex.distractor] == ["A story here."]
    with pytest.raises(HetaInputError, match="not a substring"):
        parse_example({**obj, "narrative_segment": "absent"}, 0)
    with pytest.raises(HetaInputError, match="do not index"):
        parse_example({**obj, "important_word_indices_in_sciq_support": [99]}, 0)


def test_segments_in_pieces_support_in_the_middle():
    """A support sentence between distractor sentences: the distractor is two pieces, given as spans or as a
    list of substrings (same result); the question and cue are what follows the last piece."""
    before, sup, after = "Ada owns a red van.", "Ada's bike is blue.", "Ada's hat is green."
    text = f"{before} {sup} {after}\nQuestion: What colour is Ada's bike?"
    spans = {"text": text, "answer": "blue", "support_span": [20, 39],
             "distractor_spans": [[40, 59], [0, 19]], "important_spans": [[text.index("blue"), text.index("blue") + 4]]}
    ex = parse_example(spans, 0)
    assert [ex.text[s:e] for s, e in ex.support] == [sup]
    assert [ex.text[s:e] for s, e in ex.distractor] == [before, after]  # sorted
    assert ex.text[ex.passage_end:].startswith("\nQuestion")
    by_text = parse_example({"text": text, "answer": "blue", "support": sup, "distractor": [after, before],
                             "important_words": ["blue"]}, 0)
    assert (by_text.support, by_text.distractor, by_text.gold) == (ex.support, ex.distractor, ex.gold)
    with pytest.raises(HetaInputError, match="overlap"):
        parse_example({**spans, "distractor_spans": [[0, 19], [10, 25]]}, 0)
    with pytest.raises(HetaInputError, match="overlap"):
        parse_example({**spans, "distractor_spans": [[0, 25]]}, 0)
    with pytest.raises(HetaInputError, match="not both"):
        parse_example({**spans, "distractor_span": [0, 19]}, 0)
    with pytest.raises(HetaInputError, match="non-empty list"):
        parse_example({**spans, "distractor_spans": []}, 0)


def test_metrics_count_every_piece_of_a_segment():
    """DSA and the shares over a support in the middle: each distractor piece counts, the question does not."""
    from heta_fast.evaluation.curated import Encoded, RunSettings, example_metrics

    text = "aa bb cc dd\nQ?"
    ex = parse_example({"text": text, "answer": "x", "support_span": [3, 5],
                        "distractor_spans": [[0, 2], [6, 11]]}, 0)
    offsets = [(0, 2), (2, 5), (5, 8), (8, 11), (11, 14)]  # "aa", " bb", " cc", " dd", "\nQ?"
    enc = Encoded(ids=[1, 2, 3, 4, 5], offsets=offsets, text=text, target_id=6)
    a = torch.tensor([1.0, 4.0, 2.0, 1.0, 2.0], dtype=torch.float64)

    def logprob_fn(X):  # [B, t, d] -> log π [B, V]; any function of the rows will do for the shares
        return torch.log_softmax(X.sum(1)[:, :7], -1)

    out = example_metrics(logprob_fn, torch.randn(5, 8, dtype=torch.float64), enc, ex, a, RunSettings())
    assert out["support_share"] == pytest.approx(0.4)
    assert out["distractor_share"] == pytest.approx(0.4)  # "aa" + " cc" + " dd"
    assert out["question_share"] == pytest.approx(0.2)
    assert out["dsa"] == pytest.approx(0.0)


def test_unlabelled_examples_have_no_segments_and_no_segment_metrics():
    """A sequence-level prompt has no support or distractor: it must say so ("unlabelled": true), gives no
    segment, and its segment metrics are None (left out of every mean) while the faithfulness metrics exist."""
    from heta_fast.evaluation.curated import Encoded, RunSettings, example_metrics

    text = "aa bb cc dd"
    ex = parse_example({"text": text, "answer": "x", "cue": "", "unlabelled": True}, 0)
    assert not ex.labelled and ex.support == [] and ex.distractor == []
    with pytest.raises(ValueError, match="unlabelled"):
        ex.passage_end
    with pytest.raises(HetaInputError, match="missing the support segment.*unlabelled"):
        parse_example({"text": text, "answer": "x"}, 0)
    with pytest.raises(HetaInputError, match="no segments; it gives support_span"):
        parse_example({"text": text, "answer": "x", "unlabelled": True, "support_span": [0, 2]}, 0)
    with pytest.raises(HetaInputError, match="true or false"):
        parse_example({"text": text, "answer": "x", "unlabelled": "yes"}, 0)
    enc = Encoded(ids=[1, 2, 3, 4], offsets=[(0, 2), (2, 5), (5, 8), (8, 11)], text=text, target_id=6)

    def logprob_fn(X):
        return torch.log_softmax(X.sum(1)[:, :7], -1)

    a = torch.tensor([1.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    out = example_metrics(logprob_fn, torch.randn(4, 8, dtype=torch.float64), enc, ex, a, RunSettings())
    assert all(out[k] is None for k in ("dsa", "support_share", "distractor_share", "question_share"))
    assert math.isfinite(out["soft_nc"]) and math.isfinite(out["soft_ns"])
    assert out["first_token_share"] == pytest.approx(0.125)


def test_sequence_harness_examples_follow_the_generation(tmp_path):
    """The sequence-level protocol's examples: the prompt plus the first k greedy tokens, for k = 0, stride, …;
    the harness's greedy target after each text is the generated token k (checked with the tiny model)."""
    import importlib.util
    from pathlib import Path

    from heta_fast.evaluation.curated import encode, prediction_facts

    path = Path(__file__).resolve().parents[2] / "benchmarks/eval/data/reagent/sequence_harness.py"
    spec = importlib.util.spec_from_file_location("sequence_harness", path)
    sh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sh)
    class RoundTrip(NoBosTokenizer):  # decodes every id to a character of its own, which encodes back to it
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            out = super().__call__(text, return_offsets_mapping=return_offsets_mapping)
            out["input_ids"] = [ord(c) - 0x100 if ord(c) >= 0x100 else i for c, i in zip(text, out["input_ids"])]
            return out

        def decode(self, ids):
            return "".join(chr(0x100 + i) for i in ids)

    attr = Attributor(tiny_model("llama"), RoundTrip())
    rows = sh.sequence_examples(attr, {"id": "p0", "text": "abc de"}, 5, 2)
    assert [r["id"] for r in rows] == ["p0/step0", "p0/step2", "p0/step4"] and all(r["unlabelled"] for r in rows)
    generated = attr._generate(torch.tensor(attr.tokenizer("abc de")["input_ids"]), 5)
    for r in rows:
        ex = parse_example(r, 0)
        enc = encode(attr.tokenizer, ex)
        assert r["round_trip"] and enc.text == r["text"]
        with torch.no_grad():
            X = attr.adapter.embed(torch.tensor(enc.ids))
            facts = prediction_facts(lambda x: torch.log_softmax(attr.model(inputs_embeds=x).logits[:, -1], -1),
                                     X, enc.target_id)
        assert facts["greedy_id"] == generated[r["step"]]
    # The harness runs them end to end: faithfulness metrics per method, no segment metrics in the summary.
    data = tmp_path / "seq.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = RunSettings(hessian="lowrank", rank=4, num_probes=2, soft_samples=2)
    recs = run_curated(load_examples(data), tmp_path / "out", ["random", "loo", "heta"], settings, attributor=attr,
                       targets=("greedy",), progress=False)
    assert len(recs) == 3 and all(r["target"] == "greedy" for r in recs)
    for r in recs:
        assert all(math.isfinite(v["soft_nc"]) and v["dsa"] is None for v in r["methods"].values())
    row = {x["method"]: x for x in summarize(recs, ["random", "loo", "heta"])}
    assert row["heta"]["soft_nc_n"] == 3 and row["heta"]["dsa_n"] == 0 and math.isnan(row["heta"]["dsa"])
    write_report(summarize(recs, ["random", "loo", "heta"]), tmp_path / "out", plots=False)


def test_load_examples_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = _rows(2)
    p.write_text(json.dumps(rows[0]) + "\n" + "{not json\n")
    with pytest.raises(HetaInputError, match=r"d.jsonl:2: not valid JSON"):
        load_examples(p)
    p.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps({**rows[1], "answer": ""}) + "\n")
    with pytest.raises(HetaInputError, match=r"d.jsonl:3: .*answer"):
        load_examples(p)
    p.write_text("\n".join(json.dumps(r) for r in rows))
    exs = load_examples(p)
    assert [ex.id for ex in exs] == ["ex0", "ex1"] and exs[0].text[slice(*exs[0].gold[0])] == "Sun"


def test_parse_methods():
    assert parse_methods("loo,heta") == ["loo", "heta"]
    assert "heta_sink" in parse_methods("all")
    with pytest.raises(HetaInputError, match="unknown method"):
        parse_methods(["heta", "magic"])


def test_runner_end_to_end_and_resumes(tmp_path, monkeypatch):
    attr = Attributor(tiny_model("llama"), NoBosTokenizer())
    exs = load_examples(_write_rows(tmp_path, 2))
    settings = RunSettings(hessian="lowrank", rank=4, num_probes=2, soft_samples=2, ig_steps=4,
                           stability_examples=1)
    methods = ["random", "loo", "heta", "heta_M", "heta_sink"]
    recs = run_curated(exs, tmp_path / "out", methods, settings, attributor=attr, progress=False)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(recs) == 2 and len(lines) == 2
    m = recs[0]["methods"]
    for name in methods:
        assert -1 <= m[name]["dsa"] <= 1 and 0 <= m[name]["f1"] <= 1 and "soft_nc" in m[name]
        assert "stability_noise" in m[name]
    assert "stability_seed" in m["heta"] and "stability_seed" not in m["loo"]
    assert "stability_noise" not in recs[1]["methods"]["loo"]
    assert m["loo"]["stability_noise"] == pytest.approx(1.0, abs=0.3)

    # A rerun computes nothing; a new method is computed alone.
    def boom(*a, **k):
        raise AssertionError("recomputed a finished example")

    import heta_fast.evaluation.curated as cur

    monkeypatch.setattr(cur, "method_scores", boom)
    run_curated(exs, tmp_path / "out", methods, settings, attributor=attr, progress=False)
    monkeypatch.undo()
    recs = run_curated(exs, tmp_path / "out", methods + ["grad_norm"], settings, attributor=attr, progress=False)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and list(json.loads(lines[-1])["methods"]) == ["grad_norm"]
    # Stability added later for the second example: its scores are reused, not recomputed.
    settings2 = RunSettings(**{**settings.__dict__, "stability_examples": 2})
    monkeypatch.setattr(cur, "example_metrics", boom)
    recs = run_curated(exs, tmp_path / "out", methods, settings2, attributor=attr, progress=False)
    monkeypatch.undo()
    assert "stability_noise" in recs[1]["methods"]["loo"]
    before = {m: v["dsa"] for m, v in recs[0]["methods"].items()}
    cur.rescore(exs, tmp_path / "out", settings, attributor=attr, progress=False)
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2  # merged, one per example
    recs = run_curated(exs, tmp_path / "out", methods + ["grad_norm"], settings, attributor=attr, progress=False)
    assert {m: v["dsa"] for m, v in recs[0]["methods"].items()} == pytest.approx(before)
    assert "stability_noise" in recs[0]["methods"]["heta"]
    rows = summarize(recs, methods + ["grad_norm"])
    paths = write_report(rows, tmp_path / "out", plots=False)
    assert "| heta |" in (tmp_path / "out" / "summary.md").read_text() and len(paths) == 2


def test_preset_methods_are_the_library_presets_untouched_by_runner_settings(tmp_path):
    from heta_fast.evaluation.curated import encode

    attr = Attributor(tiny_model("llama", num_hidden_layers=8), NoBosTokenizer())
    exs = load_examples(_write_rows(tmp_path, 1))
    # The runner's cheap settings (low rank 4, 2 probes) apply to its own HETA recipes, not to the presets.
    settings = RunSettings(hessian="lowrank", rank=4, num_probes=2, soft_samples=1, ig_steps=2, stability_examples=1)
    methods = ["heta_default", "heta_exact", "heta_exact_M", "heta_exact_S", "heta_exact_I", "heta_sink_sum"]
    rec = run_curated(exs, tmp_path / "out", methods, settings, attributor=attr, progress=False)[0]["methods"]
    enc = encode(attr.tokenizer, exs[0])
    lib = attr.attribute(enc.ids + [enc.target_id], target=len(enc.ids), seed=0)
    assert lib.options["layers"] == 6 and lib.options["sink_token"] == 89
    assert (lib.options["hessian"], lib.options["rank"], lib.options["num_probes"]) == ("lowrank", 16, 10)
    assert rec["heta_default"]["scores"] == pytest.approx(lib.scores, rel=1e-9)
    exact = attr.attribute(enc.ids + [enc.target_id], preset="exact", seed=0)
    assert exact.options["hessian"] == "exact" and exact.options["num_probes"] == 10
    assert rec["heta_exact"]["scores"] == pytest.approx(exact.scores, rel=1e-9)
    assert rec["heta_exact"]["scores"] != pytest.approx(lib.scores, rel=1e-3)
    for c in "MSI":  # each ablation is its component up to a constant factor (β or γ)
        a, b = torch.tensor(rec[f"heta_exact_{c}"]["scores"]), torch.tensor(getattr(exact, c))
        assert (a / a.sum()).tolist() == pytest.approx((b / b.sum()).tolist(), rel=1e-9)
    assert rec["heta_sink_sum"]["scores"] != pytest.approx(lib.scores)
    # Stability under embedding noise runs each preset on the perturbed input (its sink row unperturbed; with the
    # sink missed, no noise reached the preset runs and ρ was exactly 1): the exact preset's ranking moves.
    assert 0.5 < rec["heta_exact"]["stability_noise"] < 1.0 and "stability_seed" in rec["heta_exact"]
    assert 0.5 < rec["heta_default"]["stability_noise"] <= 1.0 and "stability_seed" in rec["heta_default"]


def test_rows_of_a_preset_whose_options_changed_are_recomputed(tmp_path, monkeypatch):
    """A stored heta_default row belongs to the preset's options when it ran: after a default changes, resuming
    recomputes it instead of reporting the old preset under the new name (the runner's own recipes are kept)."""
    import heta_fast.evaluation.curated as cur
    from heta_fast.options import PRESETS

    attr = Attributor(tiny_model("llama"), NoBosTokenizer())
    exs = load_examples(_write_rows(tmp_path, 1))
    settings = RunSettings(hessian="lowrank", rank=4, num_probes=2, soft_samples=1, ig_steps=2, stability_examples=0)
    first = run_curated(exs, tmp_path / "out", ["heta_default", "heta"], settings, attributor=attr,
                        progress=False)[0]["methods"]
    assert first["heta_default"]["preset_options"]["hessian"] == "lowrank"
    monkeypatch.setitem(PRESETS, "default", {"hessian": "exact", "num_probes": 3})
    calls = []
    real = cur.method_scores
    monkeypatch.setattr(cur, "method_scores", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = run_curated(exs, tmp_path / "out", ["heta_default", "heta"], settings, attributor=attr,
                        progress=False)[0]["methods"]
    assert calls == [["heta_default"]]  # only the preset's row is stale
    assert again["heta_default"]["preset_options"]["hessian"] == "exact"
    assert again["heta_default"]["scores"] != pytest.approx(first["heta_default"]["scores"], rel=1e-3)
    assert again["heta"]["scores"] == first["heta"]["scores"]


def test_an_option_added_at_its_default_keeps_stored_preset_rows():
    """Stored rows carry the preset's options as they ran; an option added since (its default changes nothing)
    must not make every stored row stale, while a changed value or a new option off its default does."""
    from heta_fast.evaluation.curated import same_preset

    now = {"hessian": "lowrank", "rank": 16, "coarse": "none", "expand": 3}
    assert same_preset({"hessian": "lowrank", "rank": 16}, now)  # written before coarse/expand existed
    assert not same_preset({"hessian": "lowrank", "rank": 8}, now)
    assert not same_preset({"hessian": "lowrank", "rank": 16}, {**now, "coarse": "auto"})
    assert same_preset(None, None) and not same_preset(None, now)


def test_cli_reports_unknown_method(capsys):
    from heta_fast.cli import main

    assert main(["eval", "curated", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.model
def test_curated_encoding_on_the_default_model():
    from pathlib import Path

    from heta_fast.evaluation.curated import encode
    from heta_fast.evaluation.data import default_data_path
    from heta_fast.models import load_model

    if not Path(default_data_path()).exists():
        pytest.skip("curated data not beside the checkout")
    _, tok = load_model("default")
    ex = load_examples(default_data_path())[0]
    enc = encode(tok, ex)
    assert tok.decode([enc.target_id]) == " leaves"  # the answer's first token, not the question's last
    assert enc.text.endswith("\nAnswer:") and len(enc.ids) == len(enc.offsets)
    sup = mt.token_span_mask(enc.offsets, enc.text, ex.support)
    dis = mt.token_span_mask(enc.offsets, enc.text, ex.distractor)
    assert bool(dis[0]) and not bool(sup[0])
    (s0, s1), = ex.support
    assert "".join(enc.text[s:e] for (s, e), m in zip(enc.offsets, sup, strict=True) if m).strip() == enc.text[s0:s1]


def test_a_tokenizer_bos_is_the_sink_and_scores_stay_aligned(tmp_path):
    """Gemma-style tokenizers add a BOS, which the library sets aside as the sink (no position): the runner's
    HETA scores must still cover every token of the encoded example, the BOS scored 0 and the rest exactly the
    library's (this failed with "target position out of range" before)."""
    from heta_fast.evaluation.curated import encode

    attr = Attributor(tiny_model("llama"), CharTokenizer())
    exs = load_examples(_write_rows(tmp_path, 1))
    enc = encode(attr.tokenizer, exs[0])
    assert enc.ids[0] == attr.tokenizer.bos_token_id
    settings = RunSettings(hessian="lowrank", rank=4, num_probes=2, soft_samples=1, ig_steps=2, stability_examples=0)
    rec = run_curated(exs, tmp_path / "out", ["heta_fast", "loo"], settings, attributor=attr, progress=False)[0]
    scores = rec["methods"]["heta_fast"]["scores"]
    lib = attr.attribute(enc.ids + [enc.target_id], preset="fast", seed=0)
    assert len(scores) == len(enc.ids) == len(lib.scores) + 1 and len(rec["methods"]["loo"]["scores"]) == len(enc.ids)
    assert scores[0] == 0 and scores[1:] == pytest.approx(lib.scores, rel=1e-9)


def test_reagent_records_name_their_pos_tagger_and_another_tagger_recomputes_them(tmp_path, monkeypatch):
    import heta_fast.evaluation.curated as cur

    attr = Attributor(tiny_model("llama"), NoBosTokenizer())
    exs = load_examples(_write_rows(tmp_path, 1))
    calls = []

    def fake_peer(name, attributor, ids, offsets, prompt, target_id, *, seed, pos_tags):
        calls.append(None if pos_tags is None else pos_tags["tagger"])
        return torch.arange(len(ids), dtype=torch.float64)

    monkeypatch.setattr(cur, "peer_scores", fake_peer)
    monkeypatch.setattr(cur, "_checked_pos_tags", lambda path, tok: json.loads(open(path).read()))
    files = {}
    for name in ("one", "two"):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"tagger": f"tagger {name}", "pos2ids": {}}))
    one = RunSettings(soft_samples=2, reagent_pos_tags=str(files["one"]))
    two = RunSettings(soft_samples=2, reagent_pos_tags=str(files["two"]))
    assert one.key() == two.key() == RunSettings(soft_samples=2).key()  # the other methods' rows stay shared
    recs = run_curated(exs, tmp_path / "out", ["random", "reagent"], one, attributor=attr, progress=False)
    assert recs[0]["methods"]["reagent"]["pos_tagger"] == "tagger one" and calls == ["tagger one"]
    run_curated(exs, tmp_path / "out", ["random", "reagent"], one, attributor=attr, progress=False)
    assert calls == ["tagger one"]  # finished: nothing recomputed
    recs = run_curated(exs, tmp_path / "out", ["random", "reagent"], two, attributor=attr, progress=False)
    assert calls == ["tagger one", "tagger two"]  # another tagger: ReAGent again, random reused
    last = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert list(last["methods"]) == ["reagent"] and recs[0]["methods"]["reagent"]["pos_tagger"] == "tagger two"


def test_mean_sem_leaves_out_missing_values():
    mean, sem, n = mt.mean_sem([1.0, None, 2.0, float("nan"), 3.0])
    assert (mean, n) == (2.0, 3) and sem == pytest.approx(math.sqrt(1.0 / 3.0))
    assert math.isnan(mt.mean_sem([4.0])[1]) and mt.mean_sem([4.0])[::2] == (4.0, 1)
    mean, sem, n = mt.mean_sem([None, float("nan")])
    assert math.isnan(mean) and math.isnan(sem) and n == 0
