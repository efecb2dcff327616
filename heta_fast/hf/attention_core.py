"""Causal attention core with a hand-written second derivative, for the Hessian term's graphs.

S (SPEC §2) differentiates the model twice. Through plain eager attention (matmul, mask, softmax, matmul),
autograd's double backward replays every first-backward op with its own derivative, copies the repeated
GQA keys/values, and under batched directions expands operands before each batched matmul: on the
default model that was about 30 % of a batched Hessian–vector product although the attention FLOPs are a
few per cent. Here the attention core ``O = softmax(s·Q Kᵀ + mask) V`` is one autograd function whose
backward is a second autograd function with the VJP of the backward written out (11 batched matmuls and a
dozen elementwise ops over the score matrix), and GQA reads each kv head once by stacking its query heads
as rows instead of repeating keys and values.

Used by :func:`heta_fast.hf.heta_attention` whenever a graph is built and the mask is boolean (or purely
causal) without soft-capping; tests compare values, gradients and second derivatives with the eager
composition in float64 (``tests/hf/test_attention_core.py``).

Notation below (one kv head; the query heads of its group are stacked as rows): S = s·Q Kᵀ masked,
P = softmax(S), O = P V. First backward from dO: dP = dO Vᵀ, δ = rowsum(P ⊙ dP), dS = P ⊙ (dP − δ),
dQ = s·dS K, dK = s·dSᵀ Q, dV = Pᵀ dO.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_rows(query: Tensor, n_kv: int) -> Tensor:
    """``[B, H, q, dh]`` → ``[B, H_kv, n_rep·q, dh]``: query head h = kv·n_rep + r becomes row block r of kv."""
    B, H, q, dh = query.shape
    return query.reshape(B, n_kv, (H // n_kv) * q, dh)


def _probs(qg: Tensor, key: Tensor, allowed: Tensor, scaling: float, q_len: int) -> Tensor:
    """P = softmax(s·Q Kᵀ masked) ``[B, H_kv, n_rep·q, k]`` in at least float32, cast back to the input dtype."""
    B, n_kv, rows, _ = qg.shape
    scores = torch.matmul(qg, key.transpose(-1, -2)) * scaling
    scores = scores.view(B, n_kv, rows // q_len, q_len, -1).masked_fill(~allowed, float("-inf")).view_as(scores)
    compute_dtype = torch.promote_types(scores.dtype, torch.float32)
    return torch.softmax(scores.to(compute_dtype), dim=-1).to(qg.dtype)


def _first_backward(qg, key, value, P, dO, scaling):
    """(dQ, dK, dV, dP − δ) of the attention core for the output cotangent ``dO`` (grouped layout)."""
    dP = torch.matmul(dO, value.transpose(-1, -2))
    dP_centered = dP - (P * dP).sum(-1, keepdim=True)
    dS = P * dP_centered
    dQ = torch.matmul(dS, key) * scaling
    dK = torch.matmul(dS.transpose(-1, -2), qg) * scaling
    dV = torch.matmul(P.transpose(-1, -2), dO)
    return dQ, dK, dV, dP, dP_centered, dS


class _AttentionCoreBackward(torch.autograd.Function):
    """(Q, K, V, dO; P) ↦ (dQ, dK, dV): the attention core's backward, itself differentiable once.

    P = softmax(s·Q Kᵀ masked) is passed in (the forward's), and its dependence on Q and K is part of the
    hand-written VJP, so autograd never needs P's own graph.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(qg, key, value, dO, P, scaling):
        return _first_backward(qg, key, value, P, dO, scaling)

    @staticmethod
    def setup_context(ctx, inputs, output):
        qg, key, value, dO, P, scaling = inputs
        _dQ, _dK, _dV, dP, dP_centered, dS = output
        ctx.save_for_backward(qg, key, value, dO, P, dP, dP_centered, dS)
        ctx.scaling = scaling
        ctx.mark_non_differentiable(dP, dP_centered, dS)

    @staticmethod
    def backward(ctx, gQ, gK, gV, _gdP, _gdPc, _gdS):
        # P enters as a constant input, but its dependence on Q and K is accounted for here (G_S below).
        qg, key, value, dO, P, dP, dP_centered, dS = ctx.saved_tensors
        s = ctx.scaling
        # Cotangent of dS from dQ = s·dS K and dK = s·dSᵀ Q; the direct terms for Q and K.
        G_dS = (torch.matmul(gQ, key.transpose(-1, -2)) + torch.matmul(qg, gK.transpose(-1, -2))) * s
        Q_bar = torch.matmul(dS, gK) * s
        K_bar = torch.matmul(dS.transpose(-1, -2), gQ) * s
        # dS = P ⊙ (dP − δ), δ = rowsum(P ⊙ dP).
        PG = P * G_dS
        G_delta = -PG.sum(-1, keepdim=True)
        G_dP = PG + P * G_delta
        G_P = G_dS * dP_centered + G_delta * dP + torch.matmul(dO, gV.transpose(-1, -2))  # last: dV = Pᵀ dO
        # dP = dO Vᵀ and dV = Pᵀ dO.
        dO_bar = torch.matmul(G_dP, value) + torch.matmul(P, gV)
        V_bar = torch.matmul(G_dP.transpose(-1, -2), dO)
        # P = softmax(S), S = s·Q Kᵀ.
        G_S = P * (G_P - (P * G_P).sum(-1, keepdim=True))
        Q_bar = Q_bar + torch.matmul(G_S, key) * s
        K_bar = K_bar + torch.matmul(G_S.transpose(-1, -2), qg) * s
        return Q_bar, K_bar, V_bar, dO_bar, None, None


class _AttentionCore(torch.autograd.Function):
    """O = softmax(s·Q Kᵀ masked) V in the grouped layout; its backward is :class:`_AttentionCoreBackward`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(qg, key, value, allowed, scaling, q_len):
        P = _probs(qg, key, allowed, scaling, q_len)
        return torch.matmul(P, value), P

    @staticmethod
    def setup_context(ctx, inputs, output):
        qg, key, value, allowed, scaling, q_len = inputs
        _O, P = output
        ctx.save_for_backward(qg, key, value, P)
        ctx.scaling = scaling
        ctx.mark_non_differentiable(P)

    @staticmethod
    def backward(ctx, dO, _dP):
        qg, key, value, P = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: record a node that knows its own derivative
            dQ, dK, dV, *_ = _AttentionCoreBackward.apply(qg, key, value, dO, P, ctx.scaling)
        else:
            dQ, dK, dV, *_ = _first_backward(qg, key, value, P, dO, ctx.scaling)
        return dQ, dK, dV, None, None, None


def attention_core(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
    """Causal attention ``(O [B, H, q, dh], P [B, H, q, k])`` with a hand-written double backward.

    Args:
        query: ``[B, H, q, dh]``; key, value: ``[B, H_kv, k, dh]`` (query head h reads kv head h // (H / H_kv)).
        allowed: boolean ``[q, k]`` (or broadcastable ``[B, 1, q, k]``), True where a query may see a key;
            every row must allow at least one key.
    """
    B, H, q_len, dh = query.shape
    n_kv = key.shape[1]
    if allowed.ndim == 4:  # [B or 1, 1, q, k] -> [B or 1, 1, 1, q, k] against [B, H_kv, n_rep, q, k]
        allowed = allowed[:, :, None]
    O, P = _AttentionCore.apply(_group_rows(query, n_kv), key, value, allowed, float(scaling), q_len)
    return O.view(B, H, q_len, -1), P.view(B, H, q_len, -1)
