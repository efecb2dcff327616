"""The operator's limits and the work estimate (hand-computed cases), and the serve flags that set them."""

import math

import pytest

from heta_fast import HetaInputError, HetaOptions, cli
from heta_fast.service.limits import REFERENCE_FACTOR, ServiceLimits, estimate_work, limits_from_args, window_count


@pytest.mark.parametrize("t, window, overlap, expected", [
    (10, None, 0.5, 1), (3, 4, 0.5, 1), (4, 4, 0.5, 1),
    (10, 4, 0.5, 4),   # starts 0, 2, 4, 6 (the last flush with the end)
    (11, 4, 0.5, 5),   # 0, 2, 4, 6 and 7
    (100, 10, 0.0, 10), (12, 5, 0.9, 8),  # stride 1: 0 … 7
])
def test_window_count(t, window, overlap, expected):
    assert window_count(t, window, overlap) == expected


def _opts(**kw):
    # Exact S unless a test says otherwise: its work, 2·m·t², is the one these hand counts follow.
    return HetaOptions(sink_token=None, **{"hessian": "exact", **kw})


def test_work_of_one_target_by_hand():
    # t = 10, m = 2, every layer: gate 10, S exact 2*m*t^2 = 400, I t(t+1)/2 = 55.
    w = estimate_work(_opts(num_probes=2, layers=None), num_layers=2, positions=[10], prompt_tokens=11)
    assert w.parts == {"gate": 10, "S": 400, "I": 55, "generate": 0} and w.total == 465 and w.dominant() == "S"
    # Low rank 4 over the last layer of 2 (f = 1/2): S = 8*rank*t*f = 160; a sink token adds one to t.
    w = estimate_work(HetaOptions(hessian="lowrank", rank=4, layers=1, sink_token=5), num_layers=2, positions=[10],
                      prompt_tokens=11)
    assert w.parts["S"] == 8 * 4 * 11 * 0.5 and w.parts["gate"] == 11 and w.parts["I"] == 66
    # Components left out cost nothing; the reference engine counts 4x.
    w = estimate_work(_opts(components=("M",), engine="reference"), num_layers=2, positions=[10], prompt_tokens=11)
    assert w.parts == {"gate": 10 * REFERENCE_FACTOR, "S": 0, "I": 0, "generate": 0}


def test_work_of_windows_and_of_several_targets():
    # t = 11, W = 4, overlap 0.5: 5 windows of 4 tokens each.
    w = estimate_work(_opts(num_probes=2, layers=None, window=4), num_layers=2, positions=[11], prompt_tokens=12)
    assert w.parts == {"gate": 20, "S": 5 * 2 * 2 * 16, "I": 5 * 10, "generate": 0}
    # A continuation of 3 tokens after 5: gate and I shared over the longest context (7), S per target.
    w = estimate_work(_opts(num_probes=1, layers=None), num_layers=2, positions=[5, 6, 7], prompt_tokens=5)
    assert w.parts == {"gate": 7, "S": 2 * (25 + 36 + 49), "I": 28, "generate": 0}
    # generate=3 after 5 prompt tokens: forwards of 5, 6 and 7 tokens first.
    w = estimate_work(_opts(num_probes=1, layers=None, components=("M",)), num_layers=2, positions=[5, 6, 7],
                      prompt_tokens=5, generate=3)
    assert w.parts["generate"] == 5 + 6 + 7 and w.dominant() == "generate"


def test_work_of_units_by_hand():
    # t = 10 in units (0, 4), (4, 7), (7, 10), every layer, m = 2: I = Σ (t − start) = 10 + 6 + 3 = 19;
    # exact S = 4·m per suffix row = 8 · 19 (units run in one window).
    units = [(0, 4), (4, 7), (7, 10)]
    w = estimate_work(_opts(num_probes=2, layers=None, units="sentence"), num_layers=2, positions=[10],
                      prompt_tokens=11, units=units)
    assert w.parts == {"gate": 10, "S": 8 * 19, "I": 19, "generate": 0}
    # refine=1 adds the longest unit's 4 tokens with whole-context suffixes (10 rows each); a sink adds a unit
    # of its own at 0 and shifts the others by one (n = 11): I = 11 + 10 + 6 + 3 + 4·11.
    w = estimate_work(HetaOptions(num_probes=2, layers=None, units="sentence", refine=1, sink_token=5, hessian="exact"),
                      num_layers=2, positions=[10], prompt_tokens=11, units=units)
    assert w.parts["I"] == 11 + 10 + 6 + 3 + 44 and w.parts["S"] == 8 * w.parts["I"]
    # Low rank: as for tokens (twice with refine), independent of the number of units.
    w = estimate_work(_opts(hessian="lowrank", rank=4, layers=1, units="sentence"), num_layers=2, positions=[10],
                      prompt_tokens=11, units=units)
    assert w.parts["S"] == 8 * 4 * 10 * 0.5
    # Cheaper than the token level of the same context.
    tok = estimate_work(_opts(num_probes=2, layers=None), num_layers=2, positions=[10], prompt_tokens=11)
    assert w.total < tok.total


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
