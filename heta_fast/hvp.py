"""Batched curvature–vector products for S (SPEC §2): one forward, every probe reuses its activations.

The exact path builds the first-order graph ∇g once (one forward, one backward with ``create_graph``) and
then pushes a whole batch of probe directions through the second backward at once
(``autograd.grad(..., is_grads_batched=True)``), so no probe repeats the forward. The reference engine
(:mod:`heta_fast.reference`) does one full forward and double backward per probe instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import HetaInputError
from .hf import ModelAdapter
from .reference import CurvatureProblem, draw_range_finder


def probe_batch_size(adapter: ModelAdapter, t: int, max_memory: int) -> int:
    """How many directions one batched backward may carry within ``max_memory`` bytes.

    One direction costs roughly one backward's worth of activations: per layer and token a few
    hidden-size vectors plus the MLP width plus one attention row per head.
    """
    cfg = adapter.config
    ffn = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * adapter.hidden_size)
    elem = torch.finfo(adapter.dtype).bits // 8
    per_dir = adapter.num_layers * t * (12 * adapter.hidden_size + 3 * ffn + 4 * adapter.num_heads * t) * elem
    # Larger batches than ~32 were measured slower on CPU (cache pressure); they help on GPU.
    cap = 32 if adapter.device.type == "cpu" else 256
    return max(1, min(cap, max_memory // max(per_dir, 1)))


class BatchedCurvature:
    """C·V for batches of directions V ``[B, t, d]`` with C the Hessian or the Gauss–Newton matrix."""

    def __init__(self, adapter: ModelAdapter, ids: Tensor, target_id: int, layers: int | None, curvature: str):
        self.problem = CurvatureProblem(adapter, ids, target_id, layers)
        self.curvature = curvature
        x = self.problem.point.clone().requires_grad_(True)
        self.x = x
        if curvature == "hessian":
            g = self.problem.g(x)
            (self.grad,) = torch.autograd.grad(g, x, create_graph=True)
        elif curvature == "gauss_newton":
            self.z = self.problem.logits(x)
            self.pi = torch.softmax(self.z.detach(), -1)
            self.u0 = torch.zeros_like(self.z, requires_grad=True)
            (self.jt,) = torch.autograd.grad(self.z, x, self.u0, create_graph=True)
        else:
            raise HetaInputError(f"unknown curvature {curvature!r}")

    @property
    def point(self) -> Tensor:
        return self.problem.point

    def __call__(self, V: Tensor) -> Tensor:
        if self.curvature == "hessian":
            (HV,) = torch.autograd.grad(self.grad, self.x, V, retain_graph=True, is_grads_batched=True)
            return HV
        # Gauss–Newton: J V (double-vjp trick), then (diag π − ππᵀ) and Jᵀ, all batched.
        (JV,) = torch.autograd.grad(self.jt, self.u0, V, retain_graph=True, is_grads_batched=True)
        W = self.pi * JV - self.pi * (JV @ self.pi)[:, None]
        (GV,) = torch.autograd.grad(self.z, self.x, W, retain_graph=True, is_grads_batched=True)
        return GV


def sensitivity_batched(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    *,
    probes: Tensor,
    hessian: str = "exact",
    rank: int = 64,
    curvature: str = "hessian",
    layers: int | None = None,
    seed: int = 0,
    max_memory: int = 2 * 1024**3,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """S ``[t]`` with every curvature product batched; equal probes give the reference engine's S."""
    op = BatchedCurvature(adapter, ids, target_id, layers, curvature)
    t, d = op.point.shape
    if probes.ndim != 3 or probes.shape[0] != t or probes.shape[2] != d:
        raise HetaInputError(f"probes must have shape [t={t}, m, d={d}], got {tuple(probes.shape)}")
    probes = probes.to(op.point)
    m = probes.shape[1]
    batch = probe_batch_size(adapter, t, max_memory)

    def apply_all(directions: Tensor) -> Tensor:  # [N, t, d] -> [N, t, d]
        out = []
        for a in range(0, directions.shape[0], batch):
            out.append(op(directions[a : a + batch]))
            if progress is not None:
                progress(min(batch, directions.shape[0] - a))
        return torch.cat(out)

    if hessian == "exact":
        S = torch.zeros(t, dtype=op.point.dtype, device=op.point.device)
        pairs = [(i, k) for i in range(t) for k in range(m)]  # (i, k) order, as the probes were drawn
        for a in range(0, len(pairs), batch):
            chunk = pairs[a : a + batch]
            rows = torch.tensor([i for i, _ in chunk], device=op.point.device)
            ks = torch.tensor([k for _, k in chunk], device=op.point.device)
            V = torch.zeros(len(chunk), t, d, dtype=op.point.dtype, device=op.point.device)
            ar = torch.arange(len(chunk), device=op.point.device)
            V[ar, rows] = probes[rows, ks]
            HV = op(V)
            S.index_add_(0, rows, HV[ar, rows].abs().sum(-1))
            if progress is not None:
                progress(len(chunk))
        return S / m
    if hessian != "lowrank":
        raise HetaInputError(f"unknown hessian mode {hessian!r}")
    omega = draw_range_finder(t, d, rank, seed).to(op.point)
    Y = apply_all(omega.T.reshape(rank, t, d)).reshape(rank, t * d).T
    Q, _ = torch.linalg.qr(Y)
    CQ = apply_all(Q.T.reshape(-1, t, d)).reshape(-1, t * d).T
    B = Q.T @ CQ
    B = 0.5 * (B + B.T)
    Qb = Q.reshape(t, d, -1)  # Q_i = rows of token i's block
    coeff = torch.einsum("tdk,tmd->tmk", Qb, probes)  # Q_iᵀ r_ik
    approx = torch.einsum("tdk,kj,tmj->tmd", Qb, B, coeff)  # Q_i B Q_iᵀ r_ik
    return approx.abs().sum(-1).mean(1)
