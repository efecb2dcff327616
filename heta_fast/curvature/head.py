"""The LM head's part of S's second-order graph, in closed form: computed once per target, reused by every probe.

S differentiates g = log softmax(z)[target], z = head(h), twice; h is the final hidden state at the prediction
position. Left to autograd, every batch of directions goes through the head's double backward: two products
with the ``[V, d]`` output table, which under ``vmap`` become batched matmuls that read the whole table once per
direction (113 MiB on the default model). With curvature over the last 6 layers that was about 15 % of a
batched Hessian–vector product. But the head's derivatives with respect to h do not depend on the direction:

* ∇_h g = Wᵀ (s′ ⊙ (e_t − π)),
* ∇²_h g = −F + Wᵀ diag(s″ ⊙ (e_t − π)) W,   F = Wᵀ diag(s′) (diag π − π πᵀ) diag(s′) W,

with z = s(W h + b), s the final logit soft-cap ``c·tanh(·/c)`` (Gemma-2; s′ = 1, s″ = 0 without one). F is
the head's Gauss–Newton (Fisher) matrix. Both d×d matrices cost one pass over the table per target; after
that each direction pays one ``[B, d] × [d, d]`` product. The suffix graphs of the exact path all reproduce
the clean h, so the clean run's matrices serve every chunk.

Models whose logits the fused head does not reproduce (logit scaling, a head that is not a module call) keep
autograd's path: the same numbers, at its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UnsupportedModelError
from ..hf.head import head_check_tolerance, head_logits

# Rows of the output table per block when forming F: bounds the temporary to ≈ 8192·d floats.
VOCAB_BLOCK = 8192


@dataclass
class HeadCurvature:
    """∇_h g ``[d]``, ∇²_h g ``[d, d]`` and the head's Fisher matrix F ``[d, d]`` at the clean final hidden state."""

    grad: Tensor
    hessian: Tensor
    fisher: Tensor


def head_curvature(h: Tensor, weight: Tensor, bias: Tensor | None, softcap: float, target: int) -> HeadCurvature:
    """The head's derivatives at ``h [d]`` for g = log softmax(s(W h + b))[target], in float32 or better."""
    dtype = torch.promote_types(h.dtype, torch.float32)
    W = weight.to(dtype)
    pre = torch.nn.functional.linear(h.to(dtype), W, None if bias is None else bias.to(dtype))
    if softcap:
        th = torch.tanh(pre / softcap)
        z, s1 = softcap * th, 1 - th * th
        s2 = -(2 / softcap) * th * s1
    else:
        z, s1, s2 = pre, torch.ones_like(pre), None
    pi = torch.softmax(z, -1)
    e_minus_pi = -pi
    e_minus_pi[target] += 1
    grad = W.T @ (s1 * e_minus_pi)
    # F = Σ_v (s′_v² π_v) w_v w_vᵀ − u uᵀ with u = Wᵀ(s′ ⊙ π); the curvature term of the soft-cap beside it.
    u = W.T @ (s1 * pi)
    fisher = -torch.outer(u, u)
    extra = torch.zeros_like(fisher) if s2 is not None else None
    for lo in range(0, W.shape[0], VOCAB_BLOCK):
        Wb = W[lo : lo + VOCAB_BLOCK]
        A = Wb * (s1[lo : lo + VOCAB_BLOCK] * pi[lo : lo + VOCAB_BLOCK].sqrt())[:, None]
        fisher += A.T @ A
        if extra is not None:
            extra += (Wb * (s2[lo : lo + VOCAB_BLOCK] * e_minus_pi[lo : lo + VOCAB_BLOCK])[:, None]).T @ Wb
    fisher = 0.5 * (fisher + fisher.T)
    hessian = -fisher if extra is None else 0.5 * (extra + extra.T) - fisher
    return HeadCurvature(grad, hessian, fisher)


def clean_head_curvature(adapter, h: Tensor, model_logits: Tensor, target: int) -> HeadCurvature | None:
    """:func:`head_curvature` at the clean final hidden state ``h``, or None where the fused head cannot stand in.

    ``model_logits`` (the model's own logits at the prediction position) must be reproduced from ``h``; a model
    that scales its logits, or whose head the check rejects, keeps autograd's path.
    """
    try:
        weight, bias, softcap = adapter.lm_head()
    except UnsupportedModelError:
        return None
    with torch.no_grad():
        z = head_logits(h[None], weight, bias, softcap)[0]
        ref = model_logits.float()
        tol = head_check_tolerance(z.dtype, 1e-4)
        if z.shape != ref.shape or not torch.allclose(z.float(), ref, rtol=tol, atol=tol * float(ref.abs().max())):
            return None
        return head_curvature(h, weight, bias, softcap, target)


class _TargetLogProbGrad(torch.autograd.Function):
    """(h, dg) ↦ dg·∇_h g, differentiable once more: its derivative in h is dg·∇²_h g (a ``[d, d]`` constant)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h, dg, grad, hessian):
        return (dg * grad).to(h.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, dg, grad, hessian = inputs
        ctx.save_for_backward(dg, grad, hessian)
        ctx.h_dtype = h.dtype

    @staticmethod
    def backward(ctx, u):
        dg, grad, hessian = ctx.saved_tensors
        u = u.to(hessian.dtype)
        g_h = (dg * (u @ hessian)).to(ctx.h_dtype)  # ∇²_h g is symmetric
        g_dg = (u * grad).sum(-1).to(dg.dtype)
        return g_h, g_dg, None, None


class _TargetLogProb(torch.autograd.Function):
    """h ↦ g with the head's derivatives supplied; its backward is :class:`_TargetLogProbGrad`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(h, value, grad, hessian):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, _value, grad, hessian = inputs
        ctx.save_for_backward(h, grad, hessian)

    @staticmethod
    def backward(ctx, dg):
        h, grad, hessian = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: record a node that knows its own derivative
            return _TargetLogProbGrad.apply(h, dg, grad, hessian), None, None, None
        return (dg * grad).to(h.dtype), None, None, None


def target_log_prob(h: Tensor, value: Tensor, head: HeadCurvature) -> Tensor:
    """g as a function of the final hidden state ``h [d]`` whose first and second derivatives are ``head``'s.

    ``value`` is g itself (from the model's logits); only the derivatives come from the closed form.
    """
    return _TargetLogProb.apply(h, value.detach(), head.grad, head.hessian)
