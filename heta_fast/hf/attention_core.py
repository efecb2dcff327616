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

Long contexts (issue 16): P, and the first backward's dP, dP − δ and dS, are [q, k] per layer and stay alive
for the whole second-order graph; on the default model at 8,192 tokens that is 2.4 GB each per layer. When
no probabilities are requested and q·k exceeds :data:`BLOCKED_MIN_SCORES`, the query-blocked core
(:class:`_BlockedCore`) runs instead, flash-attention style in plain torch: it keeps Q, K, V, O and the
per-row log-sum-exp, and every pass (forward, first backward, its VJP) recomputes P one block of query rows
at a time from them, so no score-sized tensor outlives a block. With δ = rowsum(P ⊙ dP) = rowsum(dO ⊙ O),
the first backward needs no full row of P either. Each block only reads the keys some row of it may see
(for a causal mask, keys up to its last row), which roughly halves the score work. Its second backward
(:class:`_BlockedCoreVJP`) takes an HVP's directions as one leading axis through its own vmap rule, so a score block
is computed once and multiplied by every direction in one product, not copied per direction by a generated rule. The
same holds for the forward's own node, which an HVP's second backward also runs backwards (its output feeds the
non-linear rest of the model): its gradient without a graph (:class:`_BlockedCoreGrads`) takes the directions at once.
The elementwise passes over a score block that involve the directions (dS = P ⊙ (dP − δ), and the softmax's part of
the second backward) run row by row in compiled CPU kernels where the extension is loaded (:mod:`.score_rows`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .score_rows import center_mul_rows_, softmax_vjp_rows_

# The query-blocked core takes over graph-building calls with more score elements than this per head
# (q_len·k_len) when no probabilities are requested. It recomputes P but reads half the scores under a causal
# mask, and its backward passes take an HVP's directions by hand; the whole-matrix core keeps four score-sized
# tensors per layer, which fall out of cache as the context grows. Whole S on the default model with the blocked
# core from 512² scores against 1,024² (2-core Intel Xeon, 2026-12-07, `benchmarks/bench_blocked_threshold.py`):
# 0.76–0.87x at 573 and 804 tokens, 0.42–0.52x at 985; no change at 477 (figures in benchmarks/RESULTS.md, *The
# blocked core from 512 rows*). Until then the threshold was 1,024², from a first version of the blocked core that
# took 1.39x the whole-matrix core's time at 512 tokens and 1.17x at 768 (one layer, one HVP, one thread).
BLOCKED_MIN_SCORES = 512 * 512
# Bytes of one block's scores [B, H, rows, keys] in the softmax dtype: each pass holds a handful of
# block-sized temporaries (times the directions under vmap), never a full score matrix.
BLOCK_BYTES = 16 * 2**20


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


# ------------------------------------------------------------------------------------------- query-blocked
# Layout: queries ``[B, H_kv, n_rep, q, dh]`` (a view of ``[B, H, q, dh]``), keys/values ``[B, H_kv, k, dh]``;
# a block is (lo, hi, k_lo, k_hi): query rows lo … hi−1 of every head, reading keys k_lo … k_hi−1 only.
# Row-sized tensors per block are ``[B, H_kv, n_rep, b, ·]``; matmuls flatten (n_rep, b) into one row axis,
# so each kv head is read once for its whole group. Everything is out of place (vmap over directions).


def _flat(x: Tensor) -> Tensor:
    """``[..., n_rep, b, c]`` → ``[..., n_rep·b, c]`` (the grouped rows a matmul against a kv head takes)."""
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])  # not flatten(): the legacy vmap has no rule for it


def _rows_mm(a: Tensor, b: Tensor) -> Tensor:
    """``[..., n_rep, r, c] @ [..., c, e]`` → ``[..., n_rep, r, e]``, b shared by the group's heads."""
    out = torch.matmul(_flat(a), b)
    return out.reshape(*out.shape[:-2], *a.shape[-3:-1], out.shape[-1])


def _keys_mm(a: Tensor, b: Tensor) -> Tensor:
    """``aᵀ b`` summed over the group: ``[..., n_rep, r, k]``, ``[..., n_rep, r, e]`` → ``[..., k, e]``."""
    return torch.matmul(_flat(a).transpose(-1, -2), _flat(b))


def _span(x: Tensor, lo: int, hi: int, dim: int = -2) -> Tensor:
    """Rows (or keys) lo … hi−1 of x along ``dim`` (narrow, not ``x[..., lo:hi, :]``: the legacy vmap of
    ``autograd.grad(is_grads_batched=True)`` cannot batch the alias that Ellipsis indexing makes)."""
    return x.narrow(dim, lo, hi - lo)


def _row_blocks(allowed: Tensor | None, q_len: int, k_len: int, rows: int) -> tuple[tuple[int, int, int, int], ...]:
    """(lo, hi, k_lo, k_hi) for blocks of ``rows`` query rows: the keys any row of the block may see."""
    starts = range(0, q_len, rows)
    if allowed is None:  # purely causal: query j sees keys up to k_len − q_len + j
        return tuple((lo, min(lo + rows, q_len), 0, k_len - q_len + min(lo + rows, q_len)) for lo in starts)
    seen = allowed.reshape(-1, q_len, k_len).any(0)  # [q, k]: seen by the row in some batch element
    seen = torch.stack([seen[lo : lo + rows].any(0) for lo in starts])  # [blocks, k]: seen by a row of the block
    cols = torch.arange(k_len, device=seen.device)
    first = torch.where(seen, cols, k_len).amin(-1)
    last = torch.where(seen, cols, -1).amax(-1)
    blocks = []
    for lo, k_lo, k_last in zip(starts, first.tolist(), last.tolist(), strict=True):
        if k_last < k_lo:  # every row of the block masked out: keep all keys (softmax gives NaN, as unblocked)
            k_lo, k_last = 0, k_len - 1
        blocks.append((lo, min(lo + rows, q_len), k_lo, k_last + 1))
    return tuple(blocks)


def _block_probs(q5: Tensor, key: Tensor, allowed: Tensor | None, scaling: float, block, lse: Tensor | None):
    """(P ``[B, H_kv, n_rep, b, k_hi − k_lo]`` in the input dtype, lse ``[B, H_kv, n_rep, b]``) of one block.

    The softmax runs in at least float32, as :func:`_probs`; with ``lse`` given (saved by the forward) it is
    exp(S − lse) and no reduction. The fresh score tensor is updated in place: one block-sized buffer.
    """
    lo, hi, k_lo, k_hi = block
    scores = _rows_mm(_span(q5, lo, hi) * scaling, _span(key, k_lo, k_hi).transpose(-1, -2))  # s on the rows
    if allowed is None:  # causal, queries at the last q_len positions: only keys after row lo's are hidden
        offset = key.shape[-2] - q5.shape[-2]
        first = max(offset + lo + 1, k_lo)  # the first key hidden from some row (b − 1 keys of a causal block)
        if first < k_hi:
            q_pos = torch.arange(offset + lo, offset + hi, device=scores.device)[:, None]
            hidden = torch.arange(first, k_hi, device=scores.device)[None, :] > q_pos
            _span(scores, first - k_lo, k_hi - k_lo, -1).masked_fill_(hidden, float("-inf"))
    else:
        scores.masked_fill_(~_span(_span(allowed, lo, hi), k_lo, k_hi, -1), float("-inf"))
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    lse = torch.logsumexp(scores, dim=-1) if lse is None else _span(lse, lo, hi, -1)
    return scores.sub_(lse.unsqueeze(-1)).exp_().to(q5.dtype), lse


def _item_by_item(apply, info, in_dims, args):
    """A vmap rule's fallback where the attention's own inputs vary along the vmapped axis (not an HVP's
    directions): ``apply`` on each item alone, the outputs stacked along a leading axis. (in_dims mirrors each
    argument's structure: the block tuples' entries are tuples of None.)"""
    items = [apply(*(a.select(d, i) if isinstance(a, Tensor) and d is not None else a for a, d in zip(args, in_dims)))
             for i in range(info.batch_size)]
    outs = tuple(torch.stack(x) for x in zip(*items))
    return outs, (0,) * len(outs)


def _blocked_grads(q5, key, value, dO, O, lse, allowed, s, blocks):
    """(dQ, dK, dV, δ) of the blocked core for N output cotangents at once (``dO [N, ...]``, a leading direction
    axis, on every output too): the first backward of a plain backward and of the graph-building one (N = 1),
    and what an HVP's second backward asks of the forward's attention node (N directions).

    P is recomputed once per block for all N directions. The directions go into the rows of the products with the
    keys and values (``[N·rows, dh] @ [dh, keys]``), so no key- or value-sized operand is expanded per direction,
    and side by side as columns where P multiplies them (dV = Pᵀ dO); dK and dV accumulate in place.
    """
    n = dO.shape[0]
    B, n_kv, n_rep, q_len, dh = q5.shape
    k_len = key.shape[-2]
    # Directions after the kv head: [B, H_kv, N, n_rep, q, ·], so (N, n_rep, rows) flatten into one row axis.
    dOd = dO.movedim(0, 2)
    delta = (dOd * O.unsqueeze(2)).sum(-1)  # [B, H_kv, N, n_rep, q]: rowsum(P ⊙ dP) = rowsum(dO ⊙ O)
    dQ = []
    dK = dO.new_zeros(B, n_kv, n, k_len, dh)
    dV = dO.new_zeros(B, n_kv, k_len, n * dh)
    for lo, hi, k_lo, k_hi in blocks:
        P, _ = _block_probs(q5, key, allowed, s, (lo, hi, k_lo, k_hi), lse)  # [B, H_kv, n_rep, b, kb]
        b, kb = hi - lo, k_hi - k_lo
        dO_b = _span(dOd, lo, hi)  # [B, H_kv, N, n_rep, b, dh]
        rows = dO_b.reshape(B, n_kv, n * n_rep * b, dh)
        dS = torch.matmul(rows, _span(value, k_lo, k_hi).transpose(-1, -2)).view(B, n_kv, n, n_rep, b, kb)
        # P ⊙ (dP − δ) in place, row by row: [O, N, I, k] with O = (B, H_kv), I = (n_rep, b).
        center_mul_rows_(dS.view(B * n_kv, n, n_rep * b, kb),
                         _span(delta, lo, hi, -1).reshape(B * n_kv, n, n_rep * b), P.view(B * n_kv, n_rep * b, kb))
        dS_rows = dS.view(B, n_kv, n * n_rep * b, kb)
        dQ.append(torch.matmul(dS_rows, _span(key, k_lo, k_hi)).mul_(s).view(B, n_kv, n, n_rep, b, dh))
        # dK: Σ over the group's rows, per direction; Q's rows are shared by the directions (broadcast).
        q_rows = _flat(_span(q5, lo, hi)).unsqueeze(2)  # [B, H_kv, 1, n_rep·b, dh]
        _span(dK, k_lo, k_hi).add_(torch.matmul(dS.view(B, n_kv, n, n_rep * b, kb).transpose(-1, -2), q_rows),
                                   alpha=s)
        del dS, dS_rows
        cols = dO_b.movedim(2, -2).reshape(B, n_kv, n_rep * b, n * dh)  # directions side by side as columns
        _span(dV, k_lo, k_hi).add_(torch.matmul(_flat(P).transpose(-1, -2), cols))
    dQ = torch.cat(dQ, -2).movedim(2, 0)  # [N, B, H_kv, n_rep, q, dh]
    return dQ, dK.movedim(2, 0), dV.view(B, n_kv, k_len, n, dh).movedim(3, 0), delta.movedim(2, 0)


def _directions_rule(apply, first_outputs, info, in_dims, args):
    """The vmap rule of the two first-backward Functions: with only dO (argument 3) batched, as over an HVP's
    directions, one pass of :func:`_blocked_grads` for all of them; otherwise item by item."""
    if any(d is not None for i, d in enumerate(in_dims[:7]) if i != 3):
        return _item_by_item(apply, info, in_dims, args)
    dO = args[3].expand(info.batch_size, *args[3].shape) if in_dims[3] is None else args[3].movedim(in_dims[3], 0)
    return _blocked_grads(*args[:3], dO, *args[4:])[:first_outputs], (0,) * first_outputs


class _BlockedCoreGrads(torch.autograd.Function):
    """(Q, K, V, dO; O, lse) ↦ (dQ, dK, dV) where no graph is built: the blocked core's first backward in a plain
    backward, and the forward node's part of an HVP's second backward, where dO carries the directions.

    Under ``torch.func.vmap`` over the directions its rule (:meth:`vmap`) computes every direction in one pass of
    :func:`_blocked_grads` (P once per block) instead of a rule generated operation by operation. Never
    differentiated (the graph-building backward is :class:`_BlockedCoreBackward`).
    """

    @staticmethod
    def forward(q5, key, value, dO, O, lse, allowed, scaling, blocks):
        return tuple(x[0] for x in _blocked_grads(q5, key, value, dO[None], O, lse, allowed, scaling, blocks)[:3])

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the blocked core's gradient without a graph is not differentiable")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _directions_rule(_BlockedCoreGrads.apply, 3, info, in_dims, args)


def _cols(x: Tensor) -> Tensor:
    """``[N, ..., r, c]`` → ``[..., r, N·c]``: the N directions side by side as columns (a small copy)."""
    return x.movedim(0, -2).reshape(*x.shape[1:-1], x.shape[0] * x.shape[-1])


def _uncols(y: Tensor, n: int) -> Tensor:
    """``[..., r, N·c]`` → ``[N, ..., r, c]`` (a view): the inverse of :func:`_cols`."""
    return y.reshape(*y.shape[:-1], n, y.shape[-1] // n).movedim(-2, 0)


def _block_vjp(q5, key, value, dO, lse, delta, allowed, s, block, gQ, gK, gV):
    """One block's share of the VJP of (dQ, dK, dV) for N directions of cotangents (gQ, gK, gV, each with a
    leading direction axis): the formula of :meth:`_AttentionCoreBackward.backward` restricted to the block's
    rows; (Q̄ rows, K̄ and V̄ at its keys, dŌ rows), each ``[N, ...]``.

    The score block's own tensors (P, dP − δ, dS) do not depend on the directions and are computed once; where
    one of them multiplies a direction's small operand (dS gK, dSᵀ gQ, P gV), the directions go side by side as
    columns of one product. Block-sized temporaries are updated in place and dropped as soon as they are used.
    (Reading the two per-direction row sums from row-sized products instead, P·[K, gK] and dS·[K, gK], saved four
    score-sized passes per direction but added more matrix work than it saved: this core's second backward took
    14 % longer in S at 4,006 tokens.)
    """
    lo, hi, k_lo, k_hi = block
    n = gQ.shape[0]
    P, _ = _block_probs(q5, key, allowed, s, block, lse)
    Qb, dOb, gQb = _span(q5, lo, hi), _span(dO, lo, hi), _span(gQ, lo, hi)
    Kr, Vr, gKr, gVr = (_span(x, k_lo, k_hi) for x in (key, value, gK, gV))
    dP_centered = _rows_mm(dOb, Vr.transpose(-1, -2)).sub_(_span(delta, lo, hi, -1).unsqueeze(-1))
    dS = P * dP_centered
    Q_bar = _uncols(_rows_mm(dS, _cols(gKr)).mul_(s), n)
    K_bar = _uncols(_keys_mm(dS, _cols(gQb)).mul_(s), n)
    del dS
    # G_dS = s·(gQ Kᵀ + Q gKᵀ) as one product over [gQ, Q] and [K, gK] (no score-sized sum).
    G_dS = _rows_mm(torch.cat([gQb * s, (Qb * s).expand_as(gQb)], -1),
                    torch.cat([Kr.expand_as(gKr), gKr], -1).transpose(-1, -2))
    # The softmax's part (score_rows.softmax_vjp_rows_reference): G_dP = P ⊙ A with A = G_dS − rowsum(P ⊙ G_dS),
    # G_S from G_P = dO gVᵀ + A ⊙ (dP − δ); fused row by row over [1, N, rows, k], written over G_dS and G_P.
    G_P = _rows_mm(dOb, gVr.transpose(-1, -2))
    rows = P.numel() // P.shape[-1]
    softmax_vjp_rows_(P.view(1, rows, -1), dP_centered.view(1, rows, -1), G_dS.view(1, n, rows, -1),
                      G_P.view(1, n, rows, -1))
    G_dP, G_S = G_dS, G_P  # written over in place
    del dP_centered, G_dS, G_P
    dO_bar = _rows_mm(G_dP, Vr).add_(_uncols(_rows_mm(P, _cols(gVr)), n))
    V_bar = _keys_mm(G_dP, dOb)
    del G_dP
    return Q_bar + _rows_mm(G_S, Kr).mul_(s), K_bar + _keys_mm(G_S, Qb).mul_(s), V_bar, dO_bar


def _blocked_vjp(q5, key, value, dO, lse, delta, allowed, gQ, gK, gV, s, blocks):
    """(Q̄, K̄, V̄, dŌ) of the blocked core's backward for N directions (leading axis of gQ, gK, gV)."""
    K_bar, V_bar = gK.new_zeros(gK.shape), gV.new_zeros(gV.shape)
    Q_bar, dO_bar = [], []
    for lo, hi, k_lo, k_hi in blocks:
        Q_b, K_b, V_b, dO_b = _block_vjp(q5, key, value, dO, lse, delta, allowed, s, (lo, hi, k_lo, k_hi), gQ, gK, gV)
        Q_bar.append(Q_b)
        dO_bar.append(dO_b)
        _span(K_bar, k_lo, k_hi).add_(K_b)
        _span(V_bar, k_lo, k_hi).add_(V_b)
    return torch.cat(Q_bar, -2), K_bar, V_bar, torch.cat(dO_bar, -2)


class _BlockedCoreVJP(torch.autograd.Function):
    """(Q, K, V, dO, lse, δ; gQ, gK, gV) ↦ (Q̄, K̄, V̄, dŌ): what one Hessian–vector product computes through the
    blocked core, with its directions batched by hand.

    Under ``torch.func.vmap`` over the directions (:func:`heta_fast.curvature.batched.batched_vjp`), a generated
    rule would expand each unbatched score block to every direction before a product with a direction's operand,
    a copy of the block per direction. The rule here (:meth:`vmap`) moves the directions to a leading axis
    instead, and :func:`_block_vjp` multiplies each score block once by all directions side by side (in S at
    4,006 tokens the core's second backward took 32 s instead of 37, S 68 s instead of 72). Third derivatives are
    never taken, so this function has no backward.
    """

    @staticmethod
    def forward(q5, key, value, dO, lse, delta, allowed, gQ, gK, gV, scaling, blocks):
        out = _blocked_vjp(q5, key, value, dO, lse, delta, allowed, gQ[None], gK[None], gV[None], scaling, blocks)
        return tuple(x[0] for x in out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the attention core is differentiable twice, not three times")

    @staticmethod
    def vmap(info, in_dims, *args):
        if any(d is not None for d in in_dims[:7]):
            return _item_by_item(_BlockedCoreVJP.apply, info, in_dims, args)
        gQ, gK, gV = (g.expand(info.batch_size, *g.shape) if d is None else g.movedim(d, 0)
                      for g, d in zip(args[7:10], in_dims[7:10]))
        return _blocked_vjp(*args[:7], gQ, gK, gV, *args[10:]), (0, 0, 0, 0)


class _BlockedCoreBackward(torch.autograd.Function):
    """(Q, K, V, dO; O, lse) ↦ (dQ, dK, dV): the blocked core's backward, itself differentiable once.

    O and lse enter as constants (the forward's); their dependence on Q, K, V is part of the hand-written VJP
    (:class:`_BlockedCoreVJP`: the formula of :class:`_AttentionCoreBackward`, evaluated one row block at a
    time), so no score-sized tensor is saved. The values are :class:`_BlockedCoreGrads`' (one function,
    :func:`_blocked_grads`); its vmap rule is the same too, since a rule generated operation by operation cannot
    batch that function's in-place accumulation.
    """

    @staticmethod
    def forward(q5, key, value, dO, O, lse, allowed, scaling, blocks):
        return tuple(x[0] for x in _blocked_grads(q5, key, value, dO[None], O, lse, allowed, scaling, blocks))

    @staticmethod
    def setup_context(ctx, inputs, output):
        q5, key, value, dO, _O, lse, allowed, scaling, blocks = inputs
        delta = output[3]
        ctx.save_for_backward(q5, key, value, dO, lse, delta, allowed)
        ctx.scaling, ctx.blocks = scaling, blocks
        ctx.mark_non_differentiable(delta)

    @staticmethod
    def backward(ctx, gQ, gK, gV, _gdelta):
        q5, key, value, dO, lse, delta, allowed = ctx.saved_tensors
        bars = _BlockedCoreVJP.apply(q5, key, value, dO, lse, delta, allowed, gQ, gK, gV, ctx.scaling, ctx.blocks)
        return *bars, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _directions_rule(_BlockedCoreBackward.apply, 4, info, in_dims, args)


class _BlockedCore(torch.autograd.Function):
    """O = softmax(s·Q Kᵀ masked) V one query block at a time, keeping lse instead of P; its backward is
    :class:`_BlockedCoreBackward`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q5, key, value, allowed, scaling, blocks):
        outs, lses = [], []
        for block in blocks:
            P, lse = _block_probs(q5, key, allowed, scaling, block, None)
            outs.append(_rows_mm(P, _span(value, block[2], block[3])))
            lses.append(lse)
            del P  # before the next block's
        return torch.cat(outs, -2), torch.cat(lses, -1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q5, key, value, allowed, scaling, blocks = inputs
        O, lse = output
        ctx.save_for_backward(q5, key, value, allowed, O, lse)
        ctx.scaling, ctx.blocks = scaling, blocks
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, dO, _dlse):
        q5, key, value, allowed, O, lse = ctx.saved_tensors
        args = (q5, key, value, dO, O.detach(), lse, allowed, ctx.scaling, ctx.blocks)
        if torch.is_grad_enabled():  # create_graph: record a node that knows its own derivative
            dQ, dK, dV, _ = _BlockedCoreBackward.apply(*args)
        else:
            dQ, dK, dV = _BlockedCoreGrads.apply(*args)
        return dQ, dK, dV, None, None, None


def block_rows(batch: int, heads: int, k_len: int, dtype: torch.dtype) -> int:
    """Query rows per block: one block's scores ``[batch, heads, rows, k_len]`` within :data:`BLOCK_BYTES`."""
    elem = torch.finfo(torch.promote_types(dtype, torch.float32)).bits // 8
    return max(1, BLOCK_BYTES // (batch * heads * k_len * elem))


def uses_blocked_core(q_len: int, k_len: int) -> bool:
    """Whether a graph-building call without probabilities takes the query-blocked core."""
    return q_len * k_len > BLOCKED_MIN_SCORES


# Block-sized temporaries one second backward through the blocked core holds at once: 7 measured at the
# default model's shapes (tests/hf/test_attention_core.py), 10 budgeted.
BLOCKED_TEMPORARIES = 10


def graph_bytes(q_len: int, k_len: int, heads: int, head_dim: int, layers: int, dtype: torch.dtype) -> int:
    """Bytes the attention cores hold in a first-order graph over ``layers`` layers, which every direction of
    the second backward shares.

    The whole-matrix core keeps four score rows per head and layer (P, dP, dP − δ, dS); the blocked core four
    query-sized rows (Q, O, dO, dQ; keys and values are smaller) and, for the layer whose second backward is
    running, :data:`BLOCKED_TEMPORARIES` blocks of :data:`BLOCK_BYTES` (blocks hold fewer query rows as more
    directions run at once, so their bytes do not grow with the directions).
    """
    elem = torch.finfo(dtype).bits // 8
    if uses_blocked_core(q_len, k_len):
        return layers * q_len * 4 * heads * head_dim * elem + BLOCKED_TEMPORARIES * BLOCK_BYTES
    return layers * q_len * 4 * heads * k_len * elem


def attention_core(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None, scaling: float, *,
                   probs: bool = True, rows_per_block: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Causal attention ``(O [B, H, q, dh], P [B, H, q, k] or None)`` with a hand-written double backward.

    Args:
        query: ``[B, H, q, dh]``; key, value: ``[B, H_kv, k, dh]`` (query head h reads kv head h // (H / H_kv)).
        allowed: boolean ``[q, k]`` (or broadcastable ``[B, 1, q, k]``), True where a query may see a key;
            every row must allow at least one key. None: purely causal (queries at the last q positions).
        probs: whether P is needed. Without it, and with q·k > :data:`BLOCKED_MIN_SCORES`, the query-blocked
            core runs and P is None.
        rows_per_block: run the blocked core with this many query rows per block, whatever the size (tests).
    """
    B, H, q_len, dh = query.shape
    k_len, n_kv = key.shape[-2], key.shape[1]
    if allowed is not None and allowed.ndim == 4:  # [B or 1, 1, q, k] -> [B or 1, 1, 1, q, k] vs [B, H_kv, n_rep, q, k]
        allowed = allowed[:, :, None]
    if rows_per_block is None and not probs and uses_blocked_core(q_len, k_len):
        rows_per_block = block_rows(B, H, k_len, query.dtype)
    if rows_per_block is not None:
        blocks = _row_blocks(allowed, q_len, k_len, rows_per_block)
        q5 = query.view(B, n_kv, H // n_kv, q_len, dh)
        O, _ = _BlockedCore.apply(q5, key, value, allowed, float(scaling), blocks)
        return O.view(B, H, q_len, -1), None
    if allowed is None:
        allowed = torch.arange(k_len, device=query.device)[None, :] <= torch.arange(
            k_len - q_len, k_len, device=query.device)[:, None]
    O, P = _AttentionCore.apply(_group_rows(query, n_kv), key, value, allowed, float(scaling), q_len)
    return O.view(B, H, q_len, -1), P.view(B, H, q_len, -1)
