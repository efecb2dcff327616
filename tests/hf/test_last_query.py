"""The Hessian term's graphs and the KL pass of one target read only the prediction position's final hidden state,
so the last layer computes that row alone (``ModelAdapter.last_row_only``: its attention attends from it, its MLP
sees it). The value and first and second derivatives must equal the full layer's, on every family (sliding windows,
GQA, fused QKV, parallel attention and MLP, soft-capping included)."""

import pytest
import torch

from heta_fast.hf import ModelAdapter
from heta_fast.models import MORE_TINY_ARCHS, TINY_ARCHS, tiny_model
from heta_fast.testing import random_ids


def _target_logprob_and_hvp(adapter, X, v, only_last: bool):
    x = X.detach().clone().requires_grad_(True)
    outputs, mlp_rows = [], []
    hooks = [adapter.attentions[-1].register_forward_hook(lambda _m, _a, out: outputs.append(out[0].detach()))]
    mlp = adapter.layers[-1].mlp
    # Runs before last_row_only's own hook pads the MLP's output back to every row.
    hooks.append(mlp.register_forward_hook(lambda _m, _a, out: mlp_rows.append(out.shape[1])))
    try:
        if only_last:
            with adapter.last_row_only():
                z = adapter.forward(x).logits[0, -1]
        else:
            z = adapter.forward(x).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    g = torch.log_softmax(z, -1)[3]
    (grad,) = torch.autograd.grad(g, x, create_graph=True)
    (hv,) = torch.autograd.grad(grad, x, v)
    return g.detach(), grad.detach(), hv, outputs[0][0], mlp_rows


@pytest.mark.parametrize("arch", TINY_ARCHS + MORE_TINY_ARCHS)
def test_last_row_only_keeps_the_last_row_and_its_derivatives(arch):
    adapter = ModelAdapter(tiny_model(arch, dtype=torch.float64))
    ids = random_ids(14, seed=2)
    with adapter.attached():
        X = adapter.embed(ids).detach()
        v = torch.randn(X.shape, generator=torch.Generator().manual_seed(0), dtype=X.dtype)
        g0, grad0, hv0, attn0, rows0 = _target_logprob_and_hvp(adapter, X, v, only_last=False)
        g1, grad1, hv1, attn1, rows1 = _target_logprob_and_hvp(adapter, X, v, only_last=True)
    # The pruned path ran: the last layer's attention output is the same (o_proj of zero, its bias) on every
    # row but the last, which a full attention over random inputs never is.
    assert torch.equal(attn1[:-1], attn1[:1].expand_as(attn1[:-1])), arch
    assert not torch.equal(attn0[:-1], attn0[:1].expand_as(attn0[:-1])), arch
    assert rows0 == [14] and rows1 == [1], arch  # and the MLP computed the last row only
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad1, grad0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hv1, hv0, rtol=1e-9, atol=1e-12)
