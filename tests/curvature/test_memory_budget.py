"""The curvature memory check: the shared first-order graph budgeted once, each direction at its marginal cost,
the attention core that will run (issue 16).

Above the blocked core's threshold the estimate grows linearly in the context (row-sized tensors plus a fixed
number of blocks) instead of quadratically, so a context the blocked core fits is not refused. The estimate is
held against the measured peak of a graph and one HVP on layers of the default model's shape; the whole-run
numbers on the default model are in benchmarks/RESULTS.md (issue 16).
"""

import json
import textwrap

import pytest

from heta_fast.curvature.batched import curvature_bytes, graph_bytes, probe_batch_size
from heta_fast.errors import MemoryBudgetError
from heta_fast.hf import ModelAdapter
from heta_fast.hf import attention_core as core_module
from heta_fast.testing import live_memory_child, tiny_model


@pytest.fixture(scope="module")
def adapter():
    return ModelAdapter(tiny_model("llama", max_position_embeddings=4096))


def test_budget_grows_linearly_above_the_threshold(adapter, monkeypatch):
    monkeypatch.setattr(core_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 256 * 256)
    b1, b2, b4 = (curvature_bytes(adapter, t, t, 2, 1) for t in (1024, 2048, 4096))
    assert b4 - b2 == pytest.approx(2 * (b2 - b1), rel=1e-3)  # linear in t
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", float("inf"))
    w1, w2, w4 = (curvature_bytes(adapter, t, t, 2, 1) for t in (1024, 2048, 4096))
    assert w4 - w2 > 3 * (w2 - w1)  # the whole-matrix core: quadratic
    assert b4 < w4 / 10


def test_a_context_the_blocked_core_fits_is_not_refused(adapter, monkeypatch):
    monkeypatch.setattr(core_module, "BLOCK_BYTES", 1 << 16)
    t, budget = 4096, 256 * 2**20  # blocked: ~40 MiB, whole: ~4 GiB
    assert probe_batch_size(adapter, t, t, budget, 2, suffix_graphs=False) >= 1
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", float("inf"))
    with pytest.raises(MemoryBudgetError, match="max_memory"):
        probe_batch_size(adapter, t, t, budget, 2, suffix_graphs=False)


def test_the_shared_graph_is_budgeted_once(adapter):
    """More budget above the graph fits more directions: fit = (max_memory − graph) / per direction."""
    t = 512
    graph, one = graph_bytes(adapter, t, t, 2), curvature_bytes(adapter, t, t, 2, 1)
    per_direction = one - graph
    assert graph > 0 and per_direction > 0
    assert probe_batch_size(adapter, t, t, graph + 3 * per_direction, 2) == 3
    with pytest.raises(MemoryBudgetError, match="max_memory"):
        probe_batch_size(adapter, t, t, one - 1, 2)


def test_exact_s_budgets_its_short_suffix_graphs(adapter, monkeypatch):
    """Exact S also builds graphs on suffixes of the context; those with q·k under the threshold take the
    whole-matrix core even on a long context. The exact path checks that graph too; low-rank S (one graph over
    the whole context) does not need to. (At a threshold of 1,024² scores, where the whole-matrix suffix's score
    rows outweigh the full graph on this narrow model.)"""
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 1024 * 1024)
    t = 2048
    q_whole = int(core_module.BLOCKED_MIN_SCORES // t)
    assert core_module.uses_blocked_core(t, t) and not core_module.uses_blocked_core(q_whole, t)
    whole_suffix, full = curvature_bytes(adapter, q_whole, t, 2, 1), curvature_bytes(adapter, t, t, 2, 1)
    assert whole_suffix > full  # on this narrow model the suffix's score rows outweigh the full graph's rows
    budget = (full + whole_suffix) // 2
    assert probe_batch_size(adapter, t, t, budget, 2, suffix_graphs=False) >= 1
    with pytest.raises(MemoryBudgetError):
        probe_batch_size(adapter, t, t, budget, 2, suffix_graphs=True)


MEASURE_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from heta_fast.curvature import batched
    from heta_fast.hf import ModelAdapter, attention_core as core
    from heta_fast.models import tiny_model
    from heta_fast.probes import draw_probes
    from heta_fast.profiling import reset_peak_rss, status_kib

    torch.set_num_threads(1)
    t, blocked, d, ffn, heads, kv_heads = (int(x) for x in sys.argv[1:])
    core.BLOCKED_MIN_SCORES = 0 if blocked else float("inf")
    model = tiny_model("llama", hidden_size=d, intermediate_size=ffn, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, num_hidden_layers=2, max_position_embeddings=t)
    adapter = ModelAdapter(model)
    ids = torch.randint(3, 97, (t,), generator=torch.Generator().manual_seed(0))
    start = []
    build = batched.CurvatureOperator.__init__
    def build_and_mark(self, *a, **k):  # the clean state is held by then; the graph and the HVP come after
        start.append(status_kib("VmRSS"))
        reset_peak_rss()
        build(self, *a, **k)
    batched.CurvatureOperator.__init__ = build_and_mark
    def one_direction(n):  # low-rank, rank 1, one pass: one graph over the context, one HVP through it
        return batched.sensitivity_batched(adapter, ids[:n], 5, probes=draw_probes(n, 1, d, 0),
                                           hessian="lowrank", rank=1, lowrank_passes=1, max_memory=2**40)
    one_direction(64)  # warm up
    start.clear()
    one_direction(t)
    print(json.dumps({"measured": (status_kib("VmHWM") - start[0]) * 1024,
                      "estimate": batched.curvature_bytes(adapter, t, t, None, 1)}))
    """
)


SMOLLM2 = (576, 1536, 9, 3)  # the default model's layer: width, MLP width, heads, KV heads
QWEN25_05B = (896, 4864, 14, 2)  # a wide MLP


@pytest.mark.parametrize("t, blocked, shape", [(1024, True, SMOLLM2), (512, False, SMOLLM2), (1024, True, QWEN25_05B)])
def test_the_estimate_covers_a_measured_graph_and_hvp(t, blocked, shape):
    """Graph + one HVP over 2 random-weight layers of a real model's shape, in a fresh process whose malloc maps
    every large block (so the peak is live memory, as tests/hf/test_attention_core.py). Measured, with the final
    layer computed for the prediction row only: 219 MB against 329 MB budgeted (SmolLM2 shape, blocked, 1,024
    tokens), 180 against 212 MB (whole core, 512), 394 against 510 MB (Qwen2.5-0.5B shape, blocked, 1,024; with
    the whole final layer 302/453, 260/311 and 642/794): covered, within 2x."""
    r = json.loads(live_memory_child(MEASURE_CHILD, t, 1 if blocked else 0, *shape))
    assert r["measured"] <= r["estimate"] <= 2 * r["measured"], r


def test_graphs_on_the_blocked_core_run_two_directions_per_cpu_slice():
    """On the CPU a suffix whose graph takes the blocked attention core (more than 512² scores) runs its second
    backwards two directions at a time (the core's direction-free work shared); shorter suffixes share about 1,024
    rows between the directions of a slice."""
    from heta_fast.curvature.batched import CPU_SLICE_LONG, cpu_slice

    assert not core_module.uses_blocked_core(512, 512) and core_module.uses_blocked_core(513, 513)
    assert CPU_SLICE_LONG == 2 and cpu_slice(513) == cpu_slice(1020) == cpu_slice(8030) == CPU_SLICE_LONG
    assert (cpu_slice(512), cpu_slice(256), cpu_slice(16), cpu_slice(1)) == (2, 4, 64, 64)
