"""The unit-level float64 references against brute force (SPEC §6): S_u against blocks of the explicit
Hessian, I_u against masked forwards run directly through HF, the single-pass low rank against its formula."""

import copy

import pytest
import torch

from heta_fast.curvature import sensitivity_reference
from heta_fast.hf import ModelAdapter
from heta_fast.information import information_reference, mask_vector
from heta_fast.probes import draw_probes, draw_range_finder
from heta_fast.testing import frozen_float64, random_ids, rel_err

UNITS = [(0, 2), (2, 3), (3, 6)]


def explicit_hessian(adapter, ids, target):
    X = adapter.embed(ids).detach()
    t, d = X.shape

    def g(flat):
        return torch.log_softmax(adapter.last_logits(flat.reshape(t, d)), -1)[target]

    return torch.autograd.functional.hessian(g, X.reshape(-1)).reshape(t * d, t * d)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unit_sensitivity_matches_explicit_hessian_blocks(arch):
    adapter = ModelAdapter(frozen_float64(arch))
    ids = random_ids(6)
    d = adapter.hidden_size
    H = explicit_hessian(adapter, ids, target=3)
    probes = draw_probes(6, 3, d, seed=4)
    S = sensitivity_reference(adapter, ids, 3, probes=probes, units=UNITS)
    expect = []
    for a, b in UNITS:
        block = H[a * d : b * d, a * d : b * d]  # P_u H P_u restricted to the unit's rows
        R = probes[a:b].transpose(0, 1).reshape(3, -1)  # R_u[k]: the tokens' probes k, stacked
        expect.append((block @ R.T).abs().sum(0).mean())
    assert rel_err(S, torch.stack(expect)) < 1e-6  # float32 casts inside llama's RMSNorm, as for tokens


def test_single_pass_low_rank_follows_its_formula():
    adapter = ModelAdapter(frozen_float64("gpt2"))
    ids = random_ids(4)
    d, rank = adapter.hidden_size, 10
    H = explicit_hessian(adapter, ids, target=2)
    probes = draw_probes(4, 2, d, seed=0)
    omega = draw_range_finder(4, d, rank, seed=0)
    Y = H @ omega
    Q, _ = torch.linalg.qr(Y)
    B = (Q.T @ Y) @ torch.linalg.pinv(Q.T @ omega)
    B = 0.5 * (B + B.T)
    approx = Q @ B @ Q.T
    S = sensitivity_reference(adapter, ids, 2, probes=probes, units=UNITS[:2], hessian="lowrank", rank=rank,
                              lowrank_passes=1)
    expect = torch.stack([(approx[a * d : b * d, a * d : b * d] @ probes[a:b].transpose(0, 1).reshape(2, -1).T)
                          .abs().sum(0).mean() for a, b in UNITS[:2]])
    assert rel_err(S, expect) < 1e-8
    # With full rank both forms are the exact block products.
    full = {p: sensitivity_reference(adapter, ids, 2, probes=probes, units=UNITS[:2], hessian="lowrank",
                                     rank=4 * d, lowrank_passes=p) for p in (1, 2)}
    exact = sensitivity_reference(adapter, ids, 2, probes=probes, units=UNITS[:2])
    assert rel_err(full[1], exact) < 1e-6 and rel_err(full[2], exact) < 1e-8


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_unit_information_matches_masked_hf_forwards(arch):
    model = frozen_float64(arch)
    adapter = ModelAdapter(model)
    ids = random_ids(6)
    vec = mask_vector(adapter, ids, "mean", None)
    I = information_reference(adapter, ids, vec, UNITS)
    table = model.get_input_embeddings().weight
    scale = float(getattr(model.get_input_embeddings(), "embed_scale", 1.0))
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    base = torch.log_softmax(eager(inputs_embeds=(table[ids] * scale)[None]).logits[0, -1], -1)
    for j, (a, b) in enumerate(UNITS):
        X = table[ids].clone()
        X[a:b] = table[ids].mean(0)  # every row of the unit at once
        logq = torch.log_softmax(eager(inputs_embeds=(X * scale)[None]).logits[0, -1], -1)
        kl = float((base.exp() * (base - logq)).sum())
        assert abs(float(I[j]) - kl) <= 1e-6 * max(1.0, abs(kl)), (j, float(I[j]), kl)
