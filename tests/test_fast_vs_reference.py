"""Every fast path against the float64 reference engine, across architectures, with the same probes.

The fast engine runs the model in float32 (its dtype); the reference engine runs a float64 copy with
loops over tokens and probes and materialised attention maps. Tolerances (relative to the largest
value of the reference vector): M 1e-4, S 1e-4, I 1e-5.
"""

import pytest

from heta_fast import Attributor, hvp, reference
from heta_fast.engine import gate_fast
from heta_fast.hf import ModelAdapter
from heta_fast.hvp import sensitivity_batched
from heta_fast.kl import information_batched
from heta_fast.testing import TINY_ARCHS, random_ids, rel_err, tiny_model

T = 11


@pytest.fixture(scope="module", params=TINY_ARCHS)
def pair(request):
    """(float32 adapter, float64 adapter) over the same tiny model."""
    model = tiny_model(request.param)
    for p in model.parameters():
        p.requires_grad_(False)
    import copy

    return request.param, ModelAdapter(model), ModelAdapter(copy.deepcopy(model).double())


@pytest.mark.parametrize("layers", [None, 1])
def test_gate_flow(pair, layers):
    _, fast, ref = pair
    ids = random_ids(T)
    M = gate_fast(fast, ids, "flow", layers)
    M_ref = reference.gate(ref, ids, rollout="flow", layers=layers)
    assert rel_err(M, M_ref) < 1e-4
    assert abs(float(M.sum()) - 1) < 1e-5


def test_gate_reference_rollout(pair):
    arch, fast, ref = pair
    ids = random_ids(T)
    if fast.num_kv_heads != fast.num_heads:
        with pytest.raises(Exception, match="H_kv = H"):
            gate_fast(fast, ids, "reference", None)
        return
    for layers in (None, 1):
        M = gate_fast(fast, ids, "reference", layers)
        M_ref = reference.gate(ref, ids, rollout="reference", layers=layers)
        assert rel_err(M, M_ref) < 1e-4


@pytest.mark.parametrize(
    "kw",
    [{}, {"curvature": "gauss_newton"}, {"layers": 1}, {"hessian": "lowrank", "rank": 12}],
    ids=["exact", "gauss_newton", "last_layer", "lowrank12"],
)
# 1 MiB: a few directions per second backward; 1 GiB: one batch per graph; sliced: that batch run by the
# CPU in slices of 2 directions (CPU_SLICE_ROWS lowered to 2·T rows).
@pytest.mark.parametrize("max_memory,slice_rows", [(1 << 20, None), (1 << 30, None), (1 << 30, 2 * T)],
                         ids=["small_batches", "one_batch", "sliced_batches"])
def test_sensitivity(pair, kw, max_memory, slice_rows, monkeypatch):
    _, fast, ref = pair
    if slice_rows is not None:
        monkeypatch.setattr(hvp, "CPU_SLICE_ROWS", slice_rows)
        assert hvp.cpu_slice(T) == 2
    ids = random_ids(T)
    probes = reference.draw_probes(T, 3, fast.hidden_size, seed=3)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), max_memory=max_memory, **kw)
    S_ref = reference.sensitivity(ref, ids, 7, probes=probes, **kw)
    # lowrank: a QR of nearly rank-deficient Y amplifies float32 noise; 1e-3 there.
    assert rel_err(S, S_ref) < (1e-3 if "rank" in kw else 1e-4)


@pytest.mark.parametrize("kw", [{}, {"curvature": "gauss_newton"}], ids=["exact", "gauss_newton"])
def test_sensitivity_autograd_head(pair, kw, monkeypatch):
    """S where the LM head's closed form cannot stand in (autograd through the head) also matches."""
    _, fast, ref = pair
    monkeypatch.setattr(hvp, "clean_head_curvature", lambda *a: None)
    ids = random_ids(T)
    probes = reference.draw_probes(T, 2, fast.hidden_size, seed=4)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), **kw)
    assert rel_err(S, reference.sensitivity(ref, ids, 7, probes=probes, **kw)) < 1e-4


@pytest.mark.parametrize("mask", ["zero", "mean", "token"])
@pytest.mark.parametrize("chunk", [1, 4, T], ids=["chunk1", "chunk4", "one_chunk"])
def test_information(pair, mask, chunk):
    _, fast, ref = pair
    all_ids = random_ids(T + 3)
    ids = all_ids[:T]
    I = information_batched(fast, ids, reference.mask_vector(fast, all_ids, mask, 3), chunk_size=chunk)
    I_ref = reference.information(ref, ids, reference.mask_vector(ref, all_ids, mask, 3))
    assert rel_err(I, I_ref) < 1e-5


def test_end_to_end_engines_agree(pair):
    arch, fast, _ = pair
    attributor = Attributor(fast.model)
    ids = random_ids(T)
    a = attributor.attribute(ids, num_probes=2, seed=5)
    b = attributor.attribute(ids, num_probes=2, seed=5, engine="reference")
    for name in ("M", "S", "I", "scores"):
        assert rel_err(getattr(a, name), getattr(b, name)) < 1e-4, name
