"""The fast sensitivity S against its float64 reference, on every tiny architecture, with the same inputs.

The fast path runs the model in float32 (its dtype); the reference runs a float64 copy (the ``fast_and_reference``
fixture of tests/conftest.py). Tolerance relative to the largest value of the reference vector: 1e-4 (1e-3 for low rank).
"""

import pytest

from heta_fast.curvature import batched as curvature_batched
from heta_fast.curvature import sensitivity_reference
from heta_fast.curvature.batched import sensitivity_batched
from heta_fast.probes import draw_probes
from heta_fast.testing import random_ids, rel_err

T = 11


@pytest.mark.parametrize(
    "kw",
    [{}, {"curvature": "gauss_newton"}, {"layers": 1}, {"hessian": "lowrank", "rank": 12}],
    ids=["exact", "gauss_newton", "last_layer", "lowrank12"],
)
# 1 MiB: a few directions per second backward; 1 GiB: one batch per graph; sliced: that batch run by the
# CPU in slices of 2 directions (CPU_SLICE_ROWS lowered to 2·T rows); long_suffix: the suffix longer than
# CPU_SLICE_ROWS, where a long context's pairs of directions run (CPU_SLICE_LONG). (Long suffixes also take the
# blocked attention core, tested with these slices below.)
@pytest.mark.parametrize("max_memory,slice_rows", [(1 << 20, None), (1 << 30, None), (1 << 30, 2 * T), (1 << 30, T - 1)],
                         ids=["small_batches", "one_batch", "sliced_batches", "long_suffix"])
def test_sensitivity(fast_and_reference, kw, max_memory, slice_rows, monkeypatch):
    _, fast, ref = fast_and_reference
    if slice_rows is not None:
        monkeypatch.setattr(curvature_batched, "CPU_SLICE_ROWS", slice_rows)
        assert curvature_batched.cpu_slice(T) == 2
    ids = random_ids(T)
    probes = draw_probes(T, 3, fast.hidden_size, seed=3)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), max_memory=max_memory, **kw)
    S_ref = sensitivity_reference(ref, ids, 7, probes=probes, **kw)
    # lowrank: a QR of nearly rank-deficient Y amplifies float32 noise; 1e-3 there.
    assert rel_err(S, S_ref) < (1e-3 if "rank" in kw else 1e-4)


@pytest.mark.parametrize("kw", [{}, {"curvature": "gauss_newton"}], ids=["exact", "gauss_newton"])
def test_sensitivity_autograd_head(fast_and_reference, kw, monkeypatch):
    """S where the LM head's closed form cannot stand in (autograd through the head) also matches."""
    _, fast, ref = fast_and_reference
    monkeypatch.setattr(curvature_batched, "clean_head_curvature", lambda *a: None)
    ids = random_ids(T)
    probes = draw_probes(T, 2, fast.hidden_size, seed=4)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), **kw)
    assert rel_err(S, sensitivity_reference(ref, ids, 7, probes=probes, **kw)) < 1e-4


@pytest.mark.parametrize("fast_and_reference", ["llama", "qwen2", "mistral"], indirect=True)
@pytest.mark.parametrize("kw", [{}, {"hessian": "lowrank", "rank": 12}, {"layers": 1, "hessian": "lowrank", "rank": 12}],
                         ids=["exact", "lowrank12", "last_layer_lowrank12"])
def test_sensitivity_through_the_blocked_attention_core(fast_and_reference, kw, monkeypatch):
    """With the blocked core's threshold forced to zero and blocks of 3 query rows, every graph the fast path
    builds takes the query-blocked attention core (issue 16), and S still matches the reference."""
    from heta_fast.hf import attention_core as core_module

    _, fast, ref = fast_and_reference
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 0)
    monkeypatch.setattr(core_module, "block_rows", lambda *a: 3)
    monkeypatch.setattr(core_module, "BLOCK_BYTES", 1 << 12)  # what the memory check budgets per block
    calls = []
    real = core_module._row_blocks
    monkeypatch.setattr(core_module, "_row_blocks", lambda *a: calls.append(a[1:]) or real(*a))
    ids = random_ids(T)
    probes = draw_probes(T, 3, fast.hidden_size, seed=3)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), max_memory=1 << 20, **kw)
    S_ref = sensitivity_reference(ref, ids, 7, probes=probes, **kw)
    assert calls, "the blocked core never ran"
    assert rel_err(S, S_ref) < (1e-3 if "rank" in kw else 1e-4)
