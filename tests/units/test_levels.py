"""Levels (SPEC §6): coarse units first, then the units inside the best of them only.

Checked against one-level runs of the same text: level 1's numbers are those of the coarse units scored on their
own (as caller spans), level 2's S and I those of the same units in a one-level run (S_u and I_u of a unit do not
depend on the other units), re-normalised over the scored units; unexpanded units are unscored, never zero.
"""

import json

import pytest
import torch

from heta_fast import Attributor
from heta_fast.errors import HetaInputError
from heta_fast.options import HetaOptions
from heta_fast.result import Attribution
from heta_fast.testing import CharTokenizer, tiny_model
from heta_fast.units import coarse_levels, partition
from heta_fast.units.levels import AUTO_MIN_PER_EXPANDED, parents

# Three paragraphs of 2, 3 and 2 sentences (the context ends inside the last one).
TEXT = "Ann met Bob. Bob ran.\n\nIt rained. We ate. Cy sang.\n\nDo go. Ok now"
OPTS = dict(num_probes=2, seed=1, hessian="exact")


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), CharTokenizer())


def _fine(text=TEXT):
    enc = CharTokenizer()(text, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]][1:]  # the BOS is the sink
    return partition("sentence", text, offsets, len(offsets) - 1)


def test_paragraph_groups_are_runs_of_whole_sentences():
    fine = _fine()
    assert coarse_levels("paragraph", fine, TEXT, expand=1) == [[[0, 1], [2, 3, 4], [5, 6]]]
    assert coarse_levels("none", fine, TEXT, expand=1) is None


def test_blocks_cover_every_unit_in_order_about_sqrt_of_expand_times_units():
    text = " ".join(f"Fact {i} is here." for i in range(40))
    fine = _fine(text)
    for expand in (1, 2, 4):
        (groups,) = coarse_levels("block", fine, text, expand)
        assert [j for g in groups for j in g] == list(range(len(fine)))
        target = round((expand * len(fine)) ** 0.5)
        assert abs(len(groups) - target) <= 2, (expand, len(groups), target)
    # auto: one level below AUTO_MIN_PER_EXPANDED · expand units, blocks from there on
    assert coarse_levels("auto", fine[:AUTO_MIN_PER_EXPANDED * 2 - 1], text, 2) is None
    assert coarse_levels("auto", fine, text, 2) == coarse_levels("block", fine, text, 2)


def test_long_contexts_get_blocks_of_blocks():
    """From 131 units at expand=3 (where two coarse levels score at most 0.8 of one level's units): blocks of
    about ∛(k²n) over sub-blocks of about ∛(k²n)²/k, nested, every unit once, in order."""
    text = " ".join(f"Fact {i} is here." for i in range(200))
    fine = _fine(text)
    assert len(coarse_levels("block", fine[:130], text, 3)) == 1
    top, sub = coarse_levels("block", fine, text, 3)
    assert [j for g in sub for j in g] == list(range(len(fine))) == [j for g in top for j in g]
    owner = parents(top, sub)
    assert owner == sorted(owner) and [j for c in range(len(top)) for g, o in zip(sub, owner) if o == c for j in g] \
        == list(range(len(fine)))  # each block is a run of whole sub-blocks
    c = (9 * len(fine)) ** (1 / 3)
    assert abs(len(top) - c) <= 2 and abs(len(sub) - c * c / 3) <= 4, (len(top), len(sub), c)


def test_blocks_close_at_paragraph_breaks():
    paras = ["Ann ran. Bob sat down.", "Cy ate. Di hid. Ed hummed. Flo sang. Gus slept. Hal woke."]
    text = "\n\n".join(paras)
    fine = _fine(text)
    # 3 blocks of 8 sentences (2.7 sentences each): the break after 2 sentences comes at 3/4 of a block's share,
    # where the midpoint rule alone would have taken a third sentence into the first block.
    (groups,) = coarse_levels("block", fine, text, expand=1)
    first_of_second = next(j for j, u in enumerate(fine) if u.char_start is not None and text[u.char_start:].lstrip()
                           .startswith("Cy ate."))
    assert first_of_second == 2
    assert any(g[0] == first_of_second for g in groups)


def test_paragraph_breaks_do_not_add_blocks_or_leave_a_large_last_one():
    """Blocks closed early at paragraph breaks leave their tokens to the next block: the count stays at the
    designed one (level 1's work grows with it; closing at every break used to add blocks) and no block, the last
    included, grows far past the others. Paragraphs of 5 sentences, blocks of about 6.3 (120 sentences, 19 blocks)."""
    text = "\n\n".join(" ".join(f"Fact {p}.{i} is here." for i in range(5)) for p in range(24))
    fine = _fine(text)
    assert len(fine) == 120
    (groups,) = coarse_levels("block", fine, text, expand=3)
    target = round((3 * len(fine)) ** 0.5)
    assert target - 1 <= len(groups) <= target, (len(groups), target)
    tokens = [fine[g[-1]].end - fine[g[0]].start for g in groups]
    assert max(tokens) <= 1.5 * sum(tokens) / len(tokens), tokens


@pytest.mark.parametrize("kw", [{}, {"hessian": "lowrank", "rank": 8, "lowrank_passes": 1}], ids=["exact", "lowrank"])
def test_levels_equal_one_level_runs_of_the_same_units(attributor, kw):
    opts = {**OPTS, **kw}
    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, **opts)
    assert [u.text.strip()[:6] for u in r.coarse_units] == ["Ann me", "It rai", "Do go."]
    # Level 1: the paragraphs scored as the caller's spans.
    spans = [u.char_span for u in r.coarse_units]
    as_spans = attributor.attribute(TEXT, spans=spans, **opts)
    same = [u for u in as_spans.units if u.kind == "span"]
    for name in ("M", "S", "I", "score"):
        a = torch.tensor([getattr(u, name) for u in r.coarse_units])
        b = torch.tensor([getattr(u, name) for u in same])
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9), name
    best = max(range(3), key=lambda c: r.coarse_units[c].score)
    assert [c.refined for c in r.coarse_units] == [c == best for c in range(3)]
    # Level 2: the expanded paragraph's sentences, with the S and I of a one-level run, normalised over themselves.
    flat = attributor.attribute(TEXT, units="sentence", **opts)
    scored = [j for j, u in enumerate(r.units) if u.scored]
    assert scored and all(r.units[j].parent == best for j in scored)
    assert all(u.parent == best for u in r.units if u.scored) and all(u.level == 2 for u in r.units)
    S = torch.tensor([flat.units[j].S for j in scored], dtype=torch.float64)
    I = torch.tensor([flat.units[j].I for j in scored], dtype=torch.float64)
    M = torch.tensor([flat.units[j].M for j in scored], dtype=torch.float64)
    assert torch.allclose(torch.tensor([r.units[j].S for j in scored], dtype=torch.float64), S, rtol=1e-5)
    assert torch.allclose(torch.tensor([r.units[j].I for j in scored], dtype=torch.float64), I, rtol=1e-5)
    expect = M * (0.5 * S / S.sum() + 0.5 * I / I.sum())
    assert torch.allclose(torch.tensor([r.units[j].score for j in scored], dtype=torch.float64), expect, rtol=1e-5)
    # Unscored units: no S or I, their parent's score (never zero), ranked after every scored unit.
    for u in r.units:
        if not u.scored:
            assert u.S is None and u.I is None and u.M is not None
            assert u.score == r.coarse_units[u.parent].score
    assert sorted(u.rank for u in r.units if u.scored) == list(range(1, len(scored) + 1))


def test_levels_fast_and_reference_engines_agree_and_refine_scored_units(attributor):
    kw = dict(units="sentence", coarse="paragraph", expand=2, refine=1, **OPTS)
    fast = attributor.attribute(TEXT, **kw)
    ref = attributor.attribute(TEXT, engine="reference", **kw)
    assert [u.scored for u in fast.units] == [u.scored for u in ref.units]
    for name in ("M", "S", "I", "score"):
        a = torch.tensor([float("nan") if getattr(u, name) is None else getattr(u, name) for u in fast.units])
        b = torch.tensor([float("nan") if getattr(u, name) is None else getattr(u, name) for u in ref.units])
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6, equal_nan=True), name
    refined = [u for u in fast.units if u.refined]
    assert len(refined) == 1 and refined[0].scored and refined[0].rank == 1
    inside = set(range(*refined[0].token_range))
    assert {i for i, v in enumerate(fast.S) if v is not None} == inside


def test_levels_round_trip_through_json(attributor, tmp_path):
    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, **OPTS)
    d = json.loads(r.to_json())
    assert d["coarse_units"] and {"scored", "parent", "level"} <= set(d["units"][0])
    back = Attribution.from_dict(d)
    assert back.to_dict() == r.to_dict()
    assert "Ann met Bob." in r.to_html()


def test_coarse_needs_finer_units():
    with pytest.raises(HetaInputError, match="coarse"):
        HetaOptions(coarse="block")  # tokens have nothing finer to expand into
    with pytest.raises(HetaInputError, match="coarse"):
        HetaOptions(units="paragraph", coarse="paragraph")
    assert HetaOptions(coarse="auto").units == "token"  # auto is a no-op on tokens (a preset may set it)
    assert HetaOptions(units="paragraph", coarse="block").coarse == "block"


def test_terminal_view_shows_both_levels(attributor, capsys):
    from types import SimpleNamespace

    from heta_fast.cli import _print_result

    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, **OPTS)
    _print_result(r, SimpleNamespace(by="scores", no_color=True, top=10))
    out = capsys.readouterr().out
    assert "level 1: 3 of 3 coarse units scored" in out
    expanded = [line for line in out.splitlines() if line[4:5] == "+"]
    assert len(expanded) == 1  # one coarse unit expanded
    unscored = next(u for u in r.units if not u.scored)
    assert f"({unscored.score:.4g})" in out  # an unscored unit shows its parent's score in brackets


def test_views_do_not_shade_unscored_units_with_their_parents_score(attributor):
    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, **OPTS)
    shades = r.shades("scores")
    for u in r.units:
        if not u.scored:
            assert all(shades[i] == 0.0 for i in range(*u.token_range))
    unscored = next(u for u in r.units if not u.scored)
    assert "not scored" in r._tooltip(unscored.token_range[0])


@pytest.mark.parametrize("kw", [{}, {"hessian": "lowrank", "rank": 8, "lowrank_passes": 1, "layers": 1}],
                         ids=["exact", "lowrank-last-layer"])
def test_every_level_shares_one_clean_forward(attributor, monkeypatch, kw):
    """The gate, S and the KL pass of every level (and the refinement) start from one clean forward, not one each:
    the gate records it rather than running its own."""
    import heta_fast.engine as engine

    runs, own_gate = [], []
    real, real_gate = engine.clean_forward, engine.gate_fast
    monkeypatch.setattr(engine, "clean_forward", lambda *a, **k: runs.append(1) or real(*a, **k))
    monkeypatch.setattr(engine, "gate_fast", lambda *a, **k: own_gate.append(1) or real_gate(*a, **k))
    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, refine=1, **{**OPTS, **kw})
    assert len(runs) == 1 and not own_gate and "gate" in r.timings
    # The same numbers as runs that do their own forwards (the gate its recorded one, the components theirs).
    monkeypatch.setattr(engine, "gate_and_clean_run",
                        lambda adapter, ids, opts: (real_gate(adapter, ids, opts.rollout, opts.layers), None))
    monkeypatch.setattr(engine, "shared_clean_run", lambda *a, **k: None)
    alone = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, refine=1, **{**OPTS, **kw})
    assert torch.allclose(torch.tensor([u.M for u in r.units]), torch.tensor([u.M for u in alone.units]),
                          rtol=1e-6, atol=1e-12)
    for name in ("S", "I", "score"):
        got, want = ([float("nan") if getattr(u, name) is None else getattr(u, name) for u in x.units] for x in (r, alone))
        assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=1e-6, atol=1e-12, equal_nan=True), name
    # The target's log-probability comes from that clean forward too (not a forward of its own): the same value
    # as the run that computed it with its own forward.
    assert r.target_logprob == pytest.approx(alone.target_logprob, abs=1e-5)


def test_low_rank_unit_runs_draw_probes_after_the_factorisation(attributor, monkeypatch):
    """The probes ([t, m, d] in float64: 0.7 GiB at 16,384 tokens) are not held while S's products run: a unit run
    with low-rank S draws them after the factorisation, and its numbers are those of probes given up front."""
    import heta_fast.engine as engine

    events = []
    real_draw, real_lowrank = engine.draw_probes, engine.lowrank_curvature
    monkeypatch.setattr(engine, "draw_probes", lambda *a, **k: events.append("probes") or real_draw(*a, **k))
    monkeypatch.setattr(engine, "lowrank_curvature",
                        lambda *a, **k: events.append(("factors", k["probes"])) or real_lowrank(*a, **k))
    kw = dict(OPTS, hessian="lowrank", rank=4, lowrank_passes=1)
    r = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, **kw)
    assert events == [("factors", None), "probes"]
    n_ctx = len(r.tokens)  # the context: every token before the target
    given = real_draw(n_ctx, kw["num_probes"], attributor.adapter.hidden_size, kw["seed"])
    same = attributor.attribute(TEXT, units="sentence", coarse="paragraph", expand=1, probes=given, **kw)
    assert [u.S for u in r.units] == [u.S for u in same.units]


# Two coarse levels over the seven sentences of TEXT: the paragraphs, over sub-blocks of one or two sentences.
TWO_LEVELS = [[[0, 1], [2, 3, 4], [5, 6]], [[0, 1], [2], [3, 4], [5], [6]]]


def _force_two_levels(monkeypatch):
    """coarse="block" gives TWO_LEVELS (blocks of blocks start at 131 units; TEXT has 7); other kinds as usual."""
    import heta_fast.api as api

    real = api.coarse_levels
    monkeypatch.setattr(api, "coarse_levels", lambda kind, *a: TWO_LEVELS if kind == "block" else real(kind, *a))


def _numbers(units, name):
    return torch.tensor([float("nan") if getattr(u, name) is None else getattr(u, name) for u in units],
                        dtype=torch.float64)


def test_two_coarse_levels_equal_one_level_runs_of_the_same_units(attributor, monkeypatch):
    """Blocks of blocks: level 1 as before, each finer level's S and I those of a one-level run of the same units,
    scored inside the best unit of the level above only; every unscored unit carries its parent's score."""
    _force_two_levels(monkeypatch)
    opts = {**OPTS, "hessian": "lowrank", "rank": 8, "lowrank_passes": 1}
    r = attributor.attribute(TEXT, units="sentence", coarse="block", expand=1, **opts)
    levels = [[u for u in r.coarse_units if u.level == k] for k in (1, 2)]
    assert [len(x) for x in levels] == [3, 5] and r.coarse_units == levels[0] + levels[1]
    assert [u.parent for u in levels[1]] == [0, 1, 1, 2, 2]
    assert [u.parent for u in r.units] == [3, 3, 4, 5, 5, 6, 7] and all(u.level == 3 for u in r.units)
    for level, (coarse, fine) in enumerate(zip(levels, levels[1:] + [r.units], strict=True), start=1):
        # Each level's scored units, as the caller's spans in a one-level run: the same M, S and I.
        scored = [u for u in coarse if u.scored]
        alone = [u for u in attributor.attribute(TEXT, spans=[u.char_span for u in scored], **opts).units
                 if u.kind == "span"]
        for name in ("M", "S", "I"):
            assert torch.allclose(_numbers(scored, name), _numbers(alone, name), rtol=1e-5, atol=1e-9), (level, name)
        # The best scored unit is the one expanded; the level below is scored inside it only.
        best = max((j for j, u in enumerate(coarse) if u.scored), key=lambda j: coarse[j].score)
        offset = 0 if level == 1 else 3
        assert [u.refined for u in coarse] == [j == best for j in range(len(coarse))]
        assert [u.scored for u in fine] == [u.parent == offset + best for u in fine]
    # An unscored unit shows its parent's score (which, for a sub-block under an unexpanded block, is that block's).
    for u in levels[1] + r.units:
        if not u.scored:
            assert u.S is None and u.I is None and u.score == r.coarse_units[u.parent].score
    assert json.loads(r.to_json())["coarse_units"][3]["level"] == 2
    assert Attribution.from_dict(r.to_dict()).to_dict() == r.to_dict()
    plan = attributor.plan(TEXT, seconds=False, units="sentence", coarse="block", expand=1, **opts)
    assert plan.coarse_levels == [3, 5] and plan.coarse_units == len(r.coarse_units)
    assert [s.name for s in plan.stages if s.component == "I"] == ["I level 1", "I level 2", "I level 3"]


def test_terminal_view_shows_every_coarse_level(attributor, monkeypatch, capsys):
    from types import SimpleNamespace

    from heta_fast.cli import _print_result

    _force_two_levels(monkeypatch)
    r = attributor.attribute(TEXT, units="sentence", coarse="block", expand=1, **OPTS)
    _print_result(r, SimpleNamespace(by="scores", no_color=True, top=10))
    out = capsys.readouterr().out
    assert "level 1: 3 of 3 coarse units scored" in out
    scored_two = sum(u.scored for u in r.coarse_units if u.level == 2)
    assert f"level 2: {scored_two} of 5 coarse units scored" in out and "scored at level 3" in out
