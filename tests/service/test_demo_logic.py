"""The demo's logic without a browser: fields to options, results to the tables, heatmap and status line.

Runs the real service on the tiny llama model (a character tokenizer whose BOS is the sink), so the rows
are compared with the :class:`~heta_fast.Attribution` the same request returns.
"""

import re

import pytest

from heta_fast.testing import torch_threads

gr = pytest.importorskip("gradio")

from heta_fast.service.app import AttributionService  # noqa: E402
from heta_fast.service.cli import load_attributor  # noqa: E402
from heta_fast.service.demo import (  # noqa: E402
    TOPK_HEADERS,
    UNIT_HEADERS,
    _gr_error,
    demo_options,
    parse_spans,
    spans_text,
    summary,
    token_rows,
    unit_rows,
    views,
)
from heta_fast.service.errors import FieldError  # noqa: E402

TWO_SENTENCES = "Hi there. Bye now"  # target 'w'; context "Hi there. Bye no" = sentences [0, 9) and [9, 16)
FIELDS = dict(num_probes=2, hessian="exact", rank=64, layers="auto", window=0, seed=0)


@pytest.fixture(scope="module")
def service():
    with torch_threads(1):
        yield AttributionService(load_attributor(tiny_model="llama"), max_tokens=256)


def explain(service, text=TWO_SENTENCES, **fields):
    """What the demo's Explain button sends, and the result."""
    with torch_threads(1):
        return service.attribute(text=text, options=demo_options(**{**FIELDS, **fields}))


# ------------------------------------------------------------------------------- fields -> options
def test_demo_options_from_the_fields():
    opts = demo_options(num_probes=4.0, hessian="lowrank", rank=16.0, layers="all", window=0, seed=None)
    assert opts == {"num_probes": 4, "hessian": "lowrank", "rank": 16, "seed": 0, "layers": None, "window": None,
                    "units": "token", "spans": None, "refine": None}
    opts = demo_options(**FIELDS, units="sentence", refine=2.0)
    assert opts["units"] == "sentence" and opts["refine"] == 2 and opts["spans"] is None and opts["layers"] == "auto"
    opts = demo_options(**FIELDS, units="spans", spans=" 0-4, 10:16 ,")
    assert opts["units"] == "spans" and opts["spans"] == [(0, 4), (10, 16)]


def test_spans_field_round_trips():
    assert parse_spans("") is None and parse_spans(" , ") is None and spans_text(None) == ""
    assert parse_spans(spans_text([(0, 40), (41, 90)])) == [(0, 40), (41, 90)]


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"units": "spans", "spans": "0-4, 5-x"}, "options.spans", "'5-x'"),
        ({"units": "spans", "spans": "0 4"}, "options.spans", "START-END"),
        ({"units": "spans", "spans": "-3-4"}, "options.spans", "'-3-4'"),
        ({"units": "spans", "spans": ""}, "options.spans", "empty"),
        ({"units": "sentence", "spans": "0-4"}, "options.spans", "choose Units 'spans'"),
        ({"units": "sentence", "refine": -1}, "options.refine", "0 (off)"),
        ({"units": "words"}, "options.units", "sentence"),
        ({"units": "sentence", "window": 256}, "options.window", "set Window to 0"),
    ],
)
def test_unreadable_fields_name_the_option(fields, field, words):
    with pytest.raises(FieldError) as info:
        demo_options(**{**FIELDS, **fields})
    assert info.value.field == field and words in str(info.value)
    shown = _gr_error(info.value)  # what the page shows
    assert isinstance(shown, gr.Error) and shown.message.startswith(f"{field}: ") and words in shown.message


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"units": "spans", "spans": "0-4, 10-100"}, "options.spans", "outside the text"),
        ({"units": "spans", "spans": "0-9, 5-12"}, "options.spans", "overlap"),
        ({"units": "spans", "spans": "4-4"}, "options.spans", "empty"),
        ({"units": "token", "refine": 1}, "options.refine", "larger than a token"),
    ],
)
def test_spans_the_service_refuses_keep_its_message(service, fields, field, words):
    # Readable fields whose values the service (library) refuses: the demo shows the service's error as it is.
    with pytest.raises(FieldError) as info:
        explain(service, **fields)
    assert info.value.field == field and words in str(info.value)


# ------------------------------------------------------------------------------- result -> views
def test_sentence_units_without_refine(service):
    res = explain(service, units="sentence")
    assert [u.char_span for u in res.units] == [(0, 9), (9, 16)]  # sink BOS is not a unit
    rows = unit_rows(res)
    assert len(rows) == 2 and all(len(r) == len(UNIT_HEADERS) for r in rows)
    best = min(res.units, key=lambda u: u.rank)
    rank, kind, chars, tokens, text, score, M, S, I = rows[0]
    assert (rank, kind, text) == (1, "sentence", " ".join(best.text.split()))
    assert chars == f"{best.char_span[0]}–{best.char_span[1]}"
    assert tokens == f"{best.token_range[0]}–{best.token_range[1] - 1}"
    assert [score, M, S, I] == pytest.approx([best.score, best.M, best.S, best.I], rel=1e-3)  # 4 digits shown
    assert [r[0] for r in rows] == [1, 2]

    # Only M is per token: every shading still gives a table, ranked by M, and says why.
    for by in ("scores", "M", "S", "I"):
        heat, tok_rows, label, u_rows = views(res, by)
        assert u_rows == rows
        assert len(tok_rows) == 10 and all(len(r) == len(TOPK_HEADERS) for r in tok_rows)
        assert [r[0] for r in tok_rows] == [i for i, _, _ in res.topk(10, by="M")]
        assert all(r[2] is None and r[4] is None and r[5] is None and r[3] is not None for r in tok_rows)
        assert label.startswith("Top tokens by M") and ("Refine" in label) == (by != "M")
        # The heatmap wraps each unit (rank on it) and gives every token its unit's text on hover.
        assert re.findall(r'class="unit" data-rank="(\d)"', heat) == ["1", "2"] or \
            re.findall(r'class="unit" data-rank="(\d)"', heat) == ["2", "1"]
        assert heat.count('class="tok"') == 16 and "Hi there." in heat and "<table>" not in heat
    assert "scored 2 units (sentence)" in summary(res) and "one by one" not in summary(res)


def test_shading_by_units_follows_the_unit_values(service):
    res = explain(service, units="sentence")
    heat, *_ = views(res, "scores")
    alphas = [float(a) for a in re.findall(r"rgba\(0,128,0,([0-9.]+)\)", heat)]
    best = min(res.units, key=lambda u: u.rank)
    inside = [alphas[i] for i in range(*best.token_range)]
    assert set(inside) == {1.0}  # the best unit is the darkest, each of its tokens alike
    other = next(u for u in res.units if u is not best)
    assert len({alphas[i] for i in range(*other.token_range)}) == 1 and alphas[other.token_range[0]] < 1.0


def test_refined_tokens_fill_the_token_table(service):
    res = explain(service, units="sentence", refine=1)
    best = min(res.units, key=lambda u: u.rank)
    assert [u.refined for u in res.units] == [u is best for u in res.units]
    rows, label = token_rows(res, "scores")
    assert label == "Top refined tokens by score"
    assert [r[0] for r in rows] == [i for i, _, _ in res.topk(10)]
    assert rows and all(best.token_range[0] <= r[0] < best.token_range[1] for r in rows)
    assert all(None not in r[2:] for r in rows)
    rows_s, label_s = token_rows(res, "S")
    assert label_s == "Top refined tokens by S" and {r[0] for r in rows_s} <= set(range(*best.token_range))
    assert token_rows(res, "M")[1] == "Top tokens by M" and len(token_rows(res, "M")[0]) == 10
    assert unit_rows(res)[0][1] == "sentence (refined)"
    assert "the tokens of the best 1 one by one" in summary(res)


def test_spans_units_and_token_results(service):
    res = explain(service, units="spans", spans="0-4")
    assert [(r[1], r[2]) for r in sorted(unit_rows(res), key=lambda r: r[2])] == [("span", "0–4"), ("gap", "4–16")]
    assert "units (spans)" in summary(res)

    plain = explain(service, text="hello world")  # no units: as before
    assert unit_rows(plain) == [] and "units" not in summary(plain)
    rows, label = token_rows(plain, "S")
    assert label == "Top tokens by S" and [r[0] for r in rows] == [i for i, _, _ in plain.topk(10, by="S")]
    assert all(None not in r for r in rows)


def test_long_unit_text_is_shortened(service):
    text = "A " + "very " * 16 + "long sentence. Short one"
    res = explain(service, text=text, units="sentence", num_probes=1)  # kept under the work limit
    texts = [r[4] for r in unit_rows(res)]
    long = next(t for t in texts if t.startswith("A very"))
    assert len(long) == 80 and long.endswith("…")
    assert "Short on" in texts
