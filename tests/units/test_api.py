"""Units end to end: Attributor with units / spans / refine on a tiny model, the engines against each other,
refined tokens against the token level, results (JSON, old JSON, HTML, terminal view)."""

import json
from types import SimpleNamespace

import pytest
import torch

from heta_fast import Attributor
from heta_fast.cli import _print_result
from heta_fast.errors import HetaInputError
from heta_fast.result import Attribution
from heta_fast.testing import CharTokenizer, NoBosTokenizer, tiny_model

TEXT = "Ann met Bob. He was 3.5 m tall! Ok"
OPTS = dict(num_probes=2, seed=1)


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), CharTokenizer())


def test_sentence_units_partition_the_context_and_combine(attributor):
    # The BOS CharTokenizer adds is the sink by default (special_tokens="sink"): not a position, not a unit.
    r = attributor.attribute(TEXT, units="sentence", **OPTS)
    assert [u.text.strip() for u in r.units] == ["Ann met Bob.", "He was 3.5 m tall!", "O"]  # context ends before "k"
    kept = attributor.attribute(TEXT, units="sentence", special_tokens="keep", **OPTS)
    assert [u.text.strip() for u in kept.units[1:]] == ["Ann met Bob.", "He was 3.5 m tall!", "O"]
    assert kept.units[0].kind == "special" and kept.units[0].char_span is None and kept.units[0].token_range == (0, 1)
    assert [i for u in r.units for i in range(*u.token_range)] == list(range(len(r.tokens)))
    for u in r.units:  # M_u is the token gate summed
        assert pytest.approx(sum(r.M[slice(*u.token_range)]), rel=1e-12) == u.M
    S = torch.tensor([u.S for u in r.units])
    I = torch.tensor([u.I for u in r.units])
    M = torch.tensor([u.M for u in r.units])
    expect = M * (0.5 * S / S.sum() + 0.5 * I / I.sum())  # normalize="sum" over units
    assert torch.allclose(torch.tensor([u.score for u in r.units], dtype=torch.float64), expect.double(), rtol=1e-6)
    assert sorted(u.rank for u in r.units) == list(range(1, len(r.units) + 1))
    assert all(v is None for v in r.S + r.I + r.scores)  # no refine: no token-level S, I, scores


def test_units_preview_is_what_attribute_scores(attributor):
    # Attributor.units runs no model: the same token ranges and character spans as the result's units, for the
    # last token, a position, a continuation's last token and caller spans; its errors are attribute's.
    cases = [({}, dict(units="sentence")), ({"target": 20}, dict(units="sentence")),
             ({"target": " And"}, dict(units="paragraph")),
             ({}, dict(units="spans", spans=[(0, 12), (13, 30)]))]
    for where, kw in cases:
        preview = attributor.units(TEXT, where.get("target"), **kw)
        res = attributor.attribute(TEXT, where.get("target"), components=("M",), **kw)
        res = res[-1] if isinstance(where.get("target"), str) else res
        assert [(u.start, u.end) for u in preview] == [u.token_range for u in res.units]
        assert [(u.char_start, u.char_end) for u in preview if u.char_start is not None] == \
            [u.char_span for u in res.units if u.char_span is not None]
    with pytest.raises(HetaInputError, match="outside the text"):
        attributor.units(TEXT, units="spans", spans=[(0, 500)])
    with pytest.raises(HetaInputError, match="out of range"):
        attributor.units(TEXT, 500, units="sentence")


@pytest.mark.parametrize("kw", [{"hessian": "exact"}, {"hessian": "lowrank", "rank": 16, "lowrank_passes": 1}],
                         ids=["exact", "lowrank1"])
def test_fast_and_reference_engines_agree_on_units(attributor, kw):
    fast = attributor.attribute(TEXT, units="sentence", refine=1, **OPTS, **kw)
    ref = attributor.attribute(TEXT, units="sentence", refine=1, engine="reference", **OPTS, **kw)
    tol = 1e-3 if kw["hessian"] == "lowrank" else 1e-4
    for name in ("M", "S", "I", "score"):
        a = torch.tensor([getattr(u, name) for u in fast.units])
        b = torch.tensor([getattr(u, name) for u in ref.units])
        assert (a - b).abs().max() <= tol * b.abs().max(), name
    assert [u.refined for u in fast.units] == [u.refined for u in ref.units]


def test_refined_tokens_are_the_token_level_values(attributor):
    """Refinement runs S and I at token level on the best units' tokens: the same numbers the token level
    gives for them (same probes); tokens of other units are left out."""
    r = attributor.attribute(TEXT, units="sentence", refine=2, **OPTS)
    tok = attributor.attribute(TEXT, **OPTS)
    refined = [u for u in r.units if u.refined]
    assert len(refined) == 2 and {u.rank for u in refined} == {1, 2}
    inside = {i for u in refined for i in range(*u.token_range)}
    for i in range(len(r.tokens)):
        if i in inside:
            assert r.S[i] == pytest.approx(tok.S[i], rel=1e-4)
            # a KL from float32 log-probabilities of order 1: about 1e-7 absolute, whatever the batch it ran in
            assert r.I[i] == pytest.approx(tok.I[i], rel=1e-4, abs=1e-6)
        else:
            assert r.S[i] is None and r.I[i] is None and r.scores[i] is None
    assert pytest.approx(tok.M, rel=1e-6) == r.M
    S_in = sum(r.S[i] for i in inside)
    I_in = sum(r.I[i] for i in inside)
    for i in inside:  # token scores normalised over the refined tokens
        assert r.scores[i] == pytest.approx(r.M[i] * (0.5 * r.S[i] / S_in + 0.5 * r.I[i] / I_in), rel=1e-9)


def test_spans_with_a_sink_token_and_errors():
    attr = Attributor(tiny_model("qwen2"), NoBosTokenizer())
    r = attr.attribute(TEXT, spans=[(4, 7), (13, 15)], **OPTS)  # "met", "He"
    assert r.options["sink_token"] == 89 and r.sink_gate_mass is not None  # the sink ran and was dropped
    assert [(u.text, u.kind) for u in r.units] == [("Ann ", "gap"), ("met", "span"), (" Bob. ", "gap"),
                                                   ("He", "span"), (" was 3.5 m tall! O", "gap")]  # context ends before "k"
    assert sum(u.M for u in r.units) == pytest.approx(1.0)
    with pytest.raises(HetaInputError, match="outside the text"):
        attr.attribute(TEXT, spans=[(0, 99)], **OPTS)
    with pytest.raises(HetaInputError, match="no text"):
        attr.attribute([5, 6, 7, 8], units="sentence", **OPTS)


def test_results_round_trip_and_views(attributor):
    r = attributor.attribute(TEXT, units="sentence", refine=1, **OPTS)
    d = json.loads(r.to_json())
    assert d["schema_version"] == "1.4" and d["units"][0]["text"] == "Ann met Bob."  # the BOS is the sink
    back = Attribution.from_dict(d)
    assert back.units == r.units and back.S == r.S
    old = {k: v for k, v in d.items() if k != "units"} | {"schema_version": "1.1", "S": [0.0] * len(r.tokens),
                                                          "I": [0.0] * len(r.tokens), "scores": r.M}
    assert Attribution.from_dict(old).units is None  # JSON written before units still loads
    page = r.to_html()
    assert "top units" in page and "unit #1" in page and "He was 3.5 m tall!" in page
    from heta_fast.report import report_html

    assert "units by score" in report_html(r, plot=False)


def test_terminal_view_lists_units(attributor, capsys):
    r = attributor.attribute(TEXT, units="sentence", refine=1, **OPTS)
    _print_result(r, SimpleNamespace(by="scores", no_color=True, top=3))
    out = capsys.readouterr().out
    assert "rank" in out and "Ann met Bob." in out and "refined tokens" in out


def test_units_with_a_window_are_an_error_not_ignored(attributor):
    """Units run over the whole context in one window: a window with units (given, or the `long` preset's) is
    refused with what to do, never silently dropped; without it the `long` preset's other options run."""
    for kw in ({"preset": "long"}, {"window": 8}):
        with pytest.raises(HetaInputError, match=r"window=\d+ does not apply with units='sentence'") as info:
            attributor.attribute(TEXT, units="sentence", num_probes=1, **kw)
        assert info.value.field == "window" and "window=None" in str(info.value)
    r = attributor.attribute(TEXT, preset="long", units="sentence", window=None, num_probes=1, rank=4, layers=None)
    assert r.options["window"] is None and r.options["units"] == "sentence" and r.options["rank"] == 4
