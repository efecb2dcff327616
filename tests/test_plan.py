"""The cost plan (heta_fast/plan.py): hand-computed token passes for tokens, windows, several targets, units and
levels; memory against the components' own budget rules; the calibration; plan against the work the engine does;
the serve flags that set a server's limits."""

import math

import pytest

from heta_fast import Attributor, HetaInputError, HetaOptions, cli
from heta_fast.engine import window_starts
from heta_fast.hf import ModelAdapter
from heta_fast.plan import REFERENCE_FACTOR, available_memory, calibrate, make_plan, resolve_max_memory
from heta_fast.service.limits import ServiceLimits, limits_from_args
from heta_fast.testing import CharTokenizer, tiny_model


@pytest.fixture(scope="module")
def adapter():
    return ModelAdapter(tiny_model("llama"))  # 2 layers


def _opts(**kw):
    # Exact S unless a test says otherwise; every layer (f = 1) unless layers= says otherwise.
    return HetaOptions(sink_token=None, **{"hessian": "exact", "layers": None, "max_memory": 2**30, **kw})


def _parts(adapter, opts, positions, lead=0, **kw):
    return make_plan(adapter, opts, positions, lead=lead, prompt_tokens=positions[0] + 1, **kw).work_parts()


@pytest.mark.parametrize("t, window, overlap, expected", [
    (10, None, 0.5, 1), (3, 4, 0.5, 1), (4, 4, 0.5, 1),
    (10, 4, 0.5, 4),   # starts 0, 2, 4, 6 (the last flush with the end)
    (11, 4, 0.5, 5),   # 0, 2, 4, 6 and 7
    (100, 10, 0.0, 10), (12, 5, 0.9, 8),  # stride 1: 0 … 7
])
def test_the_plan_counts_the_engines_windows(adapter, t, window, overlap, expected):
    assert len(window_starts(t, window, overlap)) == expected
    assert make_plan(adapter, _opts(window=window, overlap=overlap), [t], lead=0, prompt_tokens=t).windows == expected


def test_passes_of_one_target_by_hand(adapter):
    # t = 10, m = 2, every layer: gate 10; S exact 4·m per row of every token's suffix = 8 · 55; I: 55 masked rows
    # (the clean forward S and I start from is the gate's recorded one); without M, I runs it (10).
    assert _parts(adapter, _opts(num_probes=2), [10]) == {"gate": 10, "S": 8 * 55, "I": 55, "generate": 0}
    assert _parts(adapter, _opts(num_probes=2, components=("S", "I")), [10])["I"] == 65
    # Low rank 4, two passes, over the last layer of 2 (f = 1/2): S = 4·rank·passes·f·n; a lead token adds one to n.
    p = _parts(adapter, _opts(hessian="lowrank", rank=4, layers=1), [10], lead=1)
    assert p["S"] == 4 * 4 * 2 * 0.5 * 11 and p["gate"] == 11 and p["I"] == 66
    assert _parts(adapter, _opts(hessian="lowrank", rank=4, lowrank_passes=1, layers=1), [10])["S"] == 4 * 4 * 0.5 * 10
    # Components left out cost nothing; the reference engine counts 4x.
    p = _parts(adapter, _opts(components=("M",), engine="reference"), [10])
    assert p == {"gate": 10 * REFERENCE_FACTOR, "S": 0, "I": 0, "generate": 0}


def test_passes_of_windows_and_of_several_targets(adapter):
    # t = 11, W = 4, overlap 0.5: 5 windows of 4 tokens each (S 8·10 and I 10 per window, its clean forward the gate's).
    assert _parts(adapter, _opts(num_probes=2, window=4), [11]) == {"gate": 20, "S": 5 * 80, "I": 5 * 10,
                                                                    "generate": 0}
    # A continuation of 3 tokens after 5: gate and I shared over the longest context (7), S per target.
    p = _parts(adapter, _opts(num_probes=1), [5, 6, 7])
    assert p == {"gate": 7, "S": 4 * (15 + 21 + 28), "I": 28 + 7, "generate": 0}
    # generate=3 after 5 prompt tokens: forwards of 5, 6 and 7 tokens first.
    plan = make_plan(adapter, _opts(components=("M",)), [5, 6, 7], lead=0, prompt_tokens=5, generate=3)
    assert plan.work_parts()["generate"] == 5 + 6 + 7


def test_passes_of_units_and_levels_by_hand(adapter):
    # t = 10 in units (0, 4), (4, 7), (7, 10), m = 2: I = Σ (t − start) = 10 + 6 + 3 = 19 (the clean forward is the
    # gate's; without M, I's); exact S = 4·m per suffix row = 8 · 19.
    units = [[(0, 4), (4, 7), (7, 10)]]
    p = _parts(adapter, _opts(num_probes=2, units="sentence"), [10], units=units)
    assert p == {"gate": 10, "S": 8 * 19, "I": 19, "generate": 0}
    assert _parts(adapter, _opts(num_probes=2, units="sentence", components=("S", "I")), [10], units=units)["I"] == 29
    # A lead token shifts every unit by one (n = 11; the same 19 suffix rows) and is never masked itself;
    # refine=1 adds the tokens of the unit whose tokens cost most, (1, 5): rows 10 + 9 + 8 + 7 (the same clean run).
    p = _parts(adapter, _opts(num_probes=2, units="sentence", refine=1), [10], lead=1, units=units)
    assert p["I"] == 19 + (10 + 9 + 8 + 7)
    # Levels: coarse units [0, 1] and [2]; level 1 masks 10 + 3 rows; level 2 (expand=1) at most the children of
    # the costlier group, 10 + 6; every level starts from the gate's clean forward (without M, level 1 runs it).
    plan = make_plan(adapter, _opts(num_probes=2, units="sentence", coarse="block", expand=1), [10], lead=0,
                     prompt_tokens=11, units=units, coarse=[[[[0, 1], [2]]]])
    names = {s.name: s.passes for s in plan.stages}
    assert names["I level 1"] == 13 and names["I level 2"] == 16 and names["S level 2"] == 8 * 16
    plan_si = make_plan(adapter, _opts(num_probes=2, units="sentence", coarse="block", expand=1,
                                       components=("S", "I")), [10], lead=0, prompt_tokens=11, units=units,
                        coarse=[[[[0, 1], [2]]]])
    assert [s.passes for s in plan_si.stages if s.component == "I"] == [13 + 10, 16]
    # Expected: the group nearest the target expanded (expand=1: it alone), 3 rows; level 1's work is known.
    expected = {s.name: s.expected for s in plan.stages}
    assert expected["I level 1"] is None and expected["I level 2"] == pytest.approx(3)
    # Three one-unit groups, expand=2: the nearest (3 rows) and one of the others at random, (10 + 6) / 2 rows.
    spread = make_plan(adapter, _opts(num_probes=2, units="sentence", coarse="block", expand=2), [10], lead=0,
                       prompt_tokens=11, units=units, coarse=[[[[0], [1], [2]]]])
    assert {s.name: s.expected for s in spread.stages}["I level 2"] == pytest.approx(3 + 8)
    assert (plan.units, plan.coarse_units, plan.expand) == (3, 2, 1)
    # Low rank: one factorisation for every level.
    plan = make_plan(adapter, _opts(hessian="lowrank", rank=4, layers=1, units="sentence", coarse="block", expand=1),
                     [10], lead=0, prompt_tokens=11, units=units, coarse=[[[[0, 1], [2]]]])
    assert [s.name for s in plan.stages if s.component == "S"] == ["S"]
    # Two coarse levels, [[0, 1], [2]] over sub-blocks [[0], [1], [2]]: level 1 as above; level 2 at most the
    # children of the costlier block, 10 + 6; level 3 at most the children of the costliest sub-block, 10.
    plan = make_plan(adapter, _opts(num_probes=2, units="sentence", coarse="block", expand=1), [10], lead=0,
                     prompt_tokens=11, units=units, coarse=[[[[0, 1], [2]], [[0], [1], [2]]]])
    names = {s.name: s.passes for s in plan.stages}
    assert names["I level 1"] == 13 and names["I level 2"] == 16 and names["I level 3"] == 10
    assert {s.name: s.expected for s in plan.stages}["I level 3"] == pytest.approx(3)
    assert (plan.coarse_units, plan.coarse_levels) == (5, [2, 3]) and "2 coarse levels of 2 and 3 units" in plan.summary()


def test_seconds_price_each_row_at_the_keys_it_sees(adapter):
    """A forward row at position p costs a + b·(p + 1): units (0, 4), (4, 7), (7, 10) over 10 tokens mask suffixes of
    10, 6 and 3 rows that see 55, 45 and 27 keys in all; the gate's 10 rows see 55. S is priced per HVP row at the
    longest context (hvp_rows forward rows of a + b·n each, per 4 passes)."""
    cal = {"row_a": 1.0, "row_b": 0.01, "hvp_rows": 2.0}
    plan = make_plan(adapter, _opts(num_probes=2, units="sentence"), [10], lead=0, prompt_tokens=11,
                     units=[[(0, 4), (4, 7), (7, 10)]], calibration=cal)
    seconds = {s.name: s.seconds for s in plan.stages}
    assert seconds["gate"] == pytest.approx(10 + 0.01 * 55)
    assert seconds["I"] == pytest.approx(19 + 0.01 * (55 + 45 + 27))
    assert seconds["S"] == pytest.approx(8 * 19 / 4 * 2.0 * (1 + 0.01 * 10))
    # Tokens: every token's suffix, Σ m² = 385 keys over 55 rows; the clean forward is the gate's.
    plan = make_plan(adapter, _opts(num_probes=2), [10], lead=0, prompt_tokens=11, calibration=cal)
    assert {s.name: s.seconds for s in plan.stages}["I"] == pytest.approx(55 + 0.01 * 385)


def test_memory_follows_the_components_budget_rules(adapter):
    plan = make_plan(adapter, _opts(max_memory=2**30), [50], lead=0, prompt_tokens=51)
    assert plan.fits and 0 < plan.peak_memory < 2**30
    tight = make_plan(adapter, _opts(max_memory=1 << 20, num_probes=2), [200], lead=0, prompt_tokens=201)
    assert not tight.fits and "max_memory" in tight.problem
    assert "does not fit" in tight.summary()


def test_calibration_gives_seconds_and_is_kept(adapter, tmp_path):
    path = str(tmp_path / "cal.json")
    cal = calibrate(adapter, "tiny-test", cache_file=path)
    assert cal["row_a"] > 0 and cal["row_b"] >= 0 and cal["hvp_rows"] > 0
    assert calibrate(adapter, "tiny-test", cache_file=path) is cal  # once per process
    plan = make_plan(adapter, _opts(), [20], lead=0, prompt_tokens=21, calibration=cal)
    assert plan.seconds is not None and plan.seconds > 0 and all(s.seconds is not None for s in plan.stages)
    assert plan.expected_seconds == plan.seconds and "at most" not in plan.summary()  # nothing depends on results
    # With levels the finer level's work depends on level 1: the expected time below the bound, both shown.
    levels = make_plan(adapter, _opts(num_probes=2, units="sentence", coarse="block", expand=1), [10], lead=0,
                       prompt_tokens=11, units=[[(0, 4), (4, 7), (7, 10)]], coarse=[[[[0, 1], [2]]]], calibration=cal)
    assert 0 < levels.expected_seconds < levels.seconds and "at most" in levels.summary()
    assert levels.to_dict()["expected_seconds"] == levels.expected_seconds


def test_attributor_plan_is_what_attribute_runs():
    attr = Attributor(tiny_model("llama"), CharTokenizer())
    text = "Ann met Bob. Bob ran.\n\nIt rained. We ate. Cy sang.\n\nDo go. Ok now"
    kw = dict(units="sentence", coarse="paragraph", expand=1, num_probes=2, max_memory=2**30)
    plan = attr.plan(text, seconds=False, **kw)
    res = attr.attribute(text, **kw)
    assert plan.units == len(res.units) and plan.coarse_units == len(res.coarse_units) and plan.expand == 1
    assert plan.context_tokens == res.target_position
    # Level 2's masked rows: the plan's upper bound holds what the run masked (one suffix per scored unit).
    n = res.target_position + 1  # the BOS is the sink, in front
    masked = sum(n - (u.token_range[0] + 1) for u in res.units if u.scored)
    assert dict((s.name, s.passes) for s in plan.stages)["I level 2"] >= masked
    with pytest.raises(HetaInputError, match="empty"):
        attr.plan("  ")


def test_auto_memory_follows_the_free_memory():
    import torch

    free = available_memory(torch.device("cpu"))
    assert free > 0
    assert resolve_max_memory("auto", torch.device("cpu")) == max(256 * 2**20, int(0.6 * free))
    assert resolve_max_memory(12345678, torch.device("cpu")) == 12345678
    assert HetaOptions().max_memory == "auto"
    attr = Attributor(tiny_model("llama"), CharTokenizer())
    assert isinstance(attr.attribute("Ann met Bob.", num_probes=1).options["max_memory"], int)  # recorded as run


def test_limits_refuse_nonsense_and_come_from_the_serve_flags():
    for bad in ({"max_probes": 0}, {"time_limit": -1.0}, {"max_wait": math.nan}, {"max_work": math.inf}):
        with pytest.raises(HetaInputError, match=next(iter(bad)).replace("_", "-")):
            ServiceLimits(**bad)
    assert ServiceLimits(max_queue=0).max_queue == 0  # no waiting at all is a valid choice
    args = cli.build_parser().parse_args(["serve", "--max-probes", "5", "--time-limit", "2.5", "--max-memory",
                                          "1073741824", "--allow-reference-engine"])
    limits = limits_from_args(args)
    assert (limits.max_probes, limits.time_limit, limits.max_memory, limits.allow_reference_engine) == (5, 2.5, 2**30,
                                                                                                        True)
    assert limits_from_args(cli.build_parser().parse_args(["serve"])) == ServiceLimits()
