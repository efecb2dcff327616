"""The sensitivity's float64 reference against explicit Hessians, Jacobians and finite differences (SPEC §2)."""

import pytest
import torch

from heta_fast.curvature import sensitivity_reference
from heta_fast.curvature.reference import CurvatureProblem
from heta_fast.hf import ModelAdapter
from heta_fast.probes import draw_probes
from heta_fast.testing import frozen_float64, random_ids, rel_err

T = 7  # context length (odd on purpose)


def explicit_hessian(adapter, ids, target):
    X = adapter.embed(ids).detach()
    t, d = X.shape

    def g(flat):
        return torch.log_softmax(adapter.last_logits(flat.reshape(t, d)), -1)[target]

    return torch.autograd.functional.hessian(g, X.reshape(-1)).reshape(t, d, t, d)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "phi3"])
def test_sensitivity_matches_explicit_hessian_blocks(arch):
    adapter = ModelAdapter(frozen_float64(arch))
    ids = random_ids(5)
    Hs = explicit_hessian(adapter, ids, target=3)
    probes = draw_probes(5, 3, adapter.hidden_size, seed=4)
    S = sensitivity_reference(adapter, ids, 3, probes=probes)
    S_ind = torch.stack([(Hs[i, :, i, :] @ probes[i].T).abs().sum(0).mean() for i in range(5)])
    # RMSNorm in llama-family HF code casts to float32 internally, which bounds agreement near 1e-7.
    assert rel_err(S, S_ind) < 1e-6


def test_hvp_matches_finite_differences_gpt2():
    # GPT-2's layer norms stay in float64 (llama-style RMSNorm casts to float32), so FD is meaningful.
    adapter = ModelAdapter(frozen_float64("gpt2"))
    ids = random_ids(6)
    for layers in (None, 1):
        prob = CurvatureProblem(adapter, ids, 5, layers=layers)
        v = torch.randn(prob.point.shape, dtype=torch.float64)

        def grad_at(point):
            x = point.clone().requires_grad_(True)
            return torch.autograd.grad(prob.g(x), x)[0]

        eps = 1e-5
        fd = (grad_at(prob.point + eps * v) - grad_at(prob.point - eps * v)) / (2 * eps)
        assert rel_err(prob.hvp(v), fd) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gauss_newton_matches_explicit_matrix(arch):
    adapter = ModelAdapter(frozen_float64(arch))
    ids = random_ids(4)
    X = adapter.embed(ids).detach()
    t, d = X.shape
    J = torch.autograd.functional.jacobian(lambda f: adapter.last_logits(f.reshape(t, d)), X.reshape(-1))
    pi = torch.softmax(adapter.last_logits(X), -1)
    G = (J.T @ (torch.diag(pi) - torch.outer(pi, pi)) @ J).reshape(t, d, t, d)
    probes = draw_probes(t, 2, d, seed=1)
    S = sensitivity_reference(adapter, ids, 2, probes=probes, curvature="gauss_newton")
    S_ind = torch.stack([(G[i, :, i, :] @ probes[i].T).abs().sum(0).mean() for i in range(t)])
    assert rel_err(S, S_ind) < 1e-6  # float32 casts inside RMSNorm, as above
    # PSD: every diagonal block's quadratic form is non-negative.
    assert all(float(probes[i, 0] @ G[i, :, i, :] @ probes[i, 0]) >= -1e-10 for i in range(t))


def test_lowrank_with_full_rank_is_exact():
    adapter = ModelAdapter(frozen_float64("gpt2"))
    ids = random_ids(4)
    probes = draw_probes(4, 3, 32, seed=0)
    exact = sensitivity_reference(adapter, ids, 2, probes=probes)
    full = sensitivity_reference(adapter, ids, 2, probes=probes, hessian="lowrank", rank=4 * 32)
    assert rel_err(full, exact) < 1e-8
    low = sensitivity_reference(adapter, ids, 2, probes=probes, hessian="lowrank", rank=8)
    assert rel_err(low, exact) > 1e-6  # a real approximation, not the exact path in disguise


def test_layers_all_equals_embedding_curvature():
    # The residual entering layer 0 is X (+ position embeddings for GPT-2): same Hessian, same S.
    adapter = ModelAdapter(frozen_float64("gpt2"))
    ids = random_ids(5)
    probes = draw_probes(5, 2, 32, seed=0)
    S_x = sensitivity_reference(adapter, ids, 4, probes=probes)
    S_all = sensitivity_reference(adapter, ids, 4, probes=probes, layers=adapter.num_layers)
    assert rel_err(S_all, S_x) < 1e-10
    S_last = sensitivity_reference(adapter, ids, 4, probes=probes, layers=1)
    assert rel_err(S_last, S_x) > 1e-3
