"""The LM head's derivatives in closed form (heta_fast.curvature.head) against autograd, in float64."""

import pytest
import torch

from heta_fast.curvature import head as hc
from heta_fast.curvature.batched import clean_state
from heta_fast.hf import ModelAdapter
from heta_fast.testing import TINY_ARCHS, random_ids, rel_err, tiny_model


def _head_fn(weight, bias, softcap, target):
    def g(h):
        z = torch.nn.functional.linear(h, weight, bias)
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        return torch.log_softmax(z, -1)[target]

    return g


@pytest.mark.parametrize("softcap", [0.0, 3.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_closed_form_matches_autograd(softcap, with_bias, monkeypatch):
    monkeypatch.setattr(hc, "VOCAB_BLOCK", 7)  # several vocabulary blocks, the last one short
    gen = torch.Generator().manual_seed(0)
    V, d, target = 40, 6, 11
    W = torch.randn(V, d, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64) if with_bias else None
    h = torch.randn(d, generator=gen, dtype=torch.float64)
    head = hc.head_curvature(h, W, b, softcap, target)
    g = _head_fn(W, b, softcap, target)
    assert rel_err(head.grad, torch.func.grad(g)(h)) < 1e-12
    assert rel_err(head.hessian, torch.func.hessian(g)(h)) < 1e-12
    # Fisher: Jᵀ (diag π − π πᵀ) J with J = ∂z/∂h.
    def logits(x):
        z = torch.nn.functional.linear(x, W, b)
        return softcap * torch.tanh(z / softcap) if softcap else z

    J = torch.func.jacrev(logits)(h)
    pi = torch.softmax(logits(h), -1)
    assert rel_err(head.fisher, J.T @ (torch.diag(pi) - torch.outer(pi, pi)) @ J) < 1e-12


def test_second_derivative_through_the_graph():
    """A double backward through target_log_prob gives ∇²g·v, as autograd through the head itself does."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    A = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    x = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, generator=gen, dtype=torch.float64)
    g = _head_fn(W, None, 2.0, 3)

    h = torch.tanh(A @ x)  # a nonlinear map in front of the head, as the decoder is
    head = hc.head_curvature(h.detach(), W, None, 2.0, 3)
    (grad,) = torch.autograd.grad(hc.target_log_prob(h, g(h), head), x, create_graph=True)
    (hv,) = torch.autograd.grad(grad, x, v)
    (grad_ref,) = torch.autograd.grad(g(torch.tanh(A @ x)), x, create_graph=True)
    (hv_ref,) = torch.autograd.grad(grad_ref, x, v)
    assert rel_err(grad, grad_ref) < 1e-12
    assert rel_err(hv, hv_ref) < 1e-12


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_used_on_every_tiny_arch(arch):
    """The closed form stands in on every test architecture, so the fast-vs-reference S tests exercise it."""
    adapter = ModelAdapter(tiny_model(arch))
    head = clean_state(adapter, random_ids(9), None, 5)[4]
    assert head is not None
    assert head.hessian.shape == (adapter.hidden_size, adapter.hidden_size)


def test_logits_not_reproduced_keeps_autograd():
    adapter = ModelAdapter(tiny_model("llama"))
    ids = random_ids(9)
    X, _point, _layer, _cache, head = clean_state(adapter, ids, None, 5)
    with torch.no_grad(), adapter.head_input() as seen:
        logits = adapter.last_logits(X)
    h = seen[-1][0, -1]
    assert hc.clean_head_curvature(adapter, h, logits, 5) is not None
    assert hc.clean_head_curvature(adapter, h, 2 * logits, 5) is None  # a head that scales its logits
