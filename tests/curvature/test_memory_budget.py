"""The curvature memory check budgets the attention core that will run (issue 16).

Above the blocked core's threshold the estimate grows linearly in the context (row-sized tensors plus a fixed
number of blocks) instead of quadratically, so a context the blocked core fits is not refused. The budget
against a measured peak is checked for the core itself in tests/hf/test_attention_core.py; the whole-run
numbers are in benchmarks/RESULTS.md (issue 16).
"""

import pytest

from heta_fast.curvature.batched import bytes_per_direction, probe_batch_size
from heta_fast.errors import MemoryBudgetError
from heta_fast.hf import ModelAdapter
from heta_fast.hf import attention_core as core_module
from heta_fast.testing import tiny_model


@pytest.fixture(scope="module")
def adapter():
    return ModelAdapter(tiny_model("llama", max_position_embeddings=4096))


def test_budget_grows_linearly_above_the_threshold(adapter, monkeypatch):
    monkeypatch.setattr(core_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 256 * 256)
    b1, b2, b4 = (bytes_per_direction(adapter, t, t, 2) for t in (1024, 2048, 4096))
    assert b4 - b2 == pytest.approx(2 * (b2 - b1), rel=1e-3)  # linear in t
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", float("inf"))
    w1, w2, w4 = (bytes_per_direction(adapter, t, t, 2) for t in (1024, 2048, 4096))
    assert w4 - w2 > 3 * (w2 - w1)  # the whole-matrix core: quadratic
    assert b4 < w4 / 10


def test_a_context_the_blocked_core_fits_is_not_refused(adapter, monkeypatch):
    monkeypatch.setattr(core_module, "BLOCK_BYTES", 1 << 16)
    t, budget = 4096, 256 * 2**20  # blocked: 145 MiB (mostly the whole core bound of short suffixes); whole: 2.1 GiB
    assert probe_batch_size(adapter, t, t, budget, 2) >= 1
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", float("inf"))
    with pytest.raises(MemoryBudgetError):
        probe_batch_size(adapter, t, t, budget, 2)


def test_short_suffixes_on_the_whole_core_stay_budgeted(adapter, monkeypatch):
    """Exact S's suffix graphs with q·k under the threshold take the whole-matrix core even on a long context:
    the budget above the threshold never drops below that core's largest graph."""
    t = 2048
    q_whole = core_module.BLOCKED_MIN_SCORES // t
    whole_graph = core_module.graph_bytes(q_whole, t, adapter.num_heads, adapter.head_dim, 2, adapter.dtype)
    assert core_module.uses_blocked_core(t, t) and not core_module.uses_blocked_core(q_whole, t)
    assert bytes_per_direction(adapter, t, t, 2) >= whole_graph
