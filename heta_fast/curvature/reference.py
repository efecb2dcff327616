"""The sensitivity S (SPEC §2) written as plainly as possible: the float64 oracle of :mod:`heta_fast.curvature.batched`.

One full forward and double backward per probe (or per range-finder direction), exactly as the formulas read;
slow on purpose. Attention runs as plain autograd math (:func:`heta_fast.hf.plain_attention`), so the fast
path's hand-written attention derivatives are checked against autograd, not against themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import HetaInputError
from ..hf import ModelAdapter, plain_attention
from ..probes import check_probes, draw_range_finder


class CurvatureProblem:
    """g(X) = log π[x_t] at p, as a function of the differentiated variable (X, or the residual at L-k)."""

    def __init__(self, adapter: ModelAdapter, ids: Tensor, target_id: int, layers: int | None = None):
        self.adapter = adapter
        self.target_id = int(target_id)
        X = adapter.embed(ids).detach()
        self.X = X
        self.start = None
        if layers is None:
            self.point = X
        else:
            self.start = adapter.first_layer(layers)
            with torch.no_grad(), adapter.record(layer_inputs=True) as rec:
                adapter.forward(X)
            self.point = rec.layer_inputs[self.start].detach()

    def logits(self, point: Tensor) -> Tensor:
        with plain_attention():
            if self.start is None:
                return self.adapter.last_logits(point)
            return self.adapter.last_logits(self.X, replace_layer_input=(self.start, point))

    def g(self, point: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(point), dim=-1)[self.target_id]

    def hvp(self, v: Tensor) -> Tensor:
        """H v by double backward (one full forward/backward per call: the per-probe reference)."""
        x = self.point.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.g(x), x, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), x)
        return hv

    def gnvp(self, v: Tensor) -> Tensor:
        """G v = J^T (diag π − π π^T) J v with J = ∂z/∂(point): one JVP and one VJP, no second-order graph."""
        x = self.point.clone().requires_grad_(True)
        z = self.logits(x)
        pi = torch.softmax(z.detach(), dim=-1)
        # JVP via the double-vjp trick (plain autograd, so every model works).
        u0 = torch.zeros_like(z, requires_grad=True)
        (jt,) = torch.autograd.grad(z, x, u0, create_graph=True)
        (Jv,) = torch.autograd.grad(jt, u0, v)
        w = pi * Jv - pi * (pi @ Jv)
        (gv,) = torch.autograd.grad(z, x, w)
        return gv

    def matvec(self, v: Tensor, curvature: str) -> Tensor:
        return self.gnvp(v) if curvature == "gauss_newton" else self.hvp(v)


def sensitivity(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    *,
    probes: Tensor,
    units: Sequence[tuple[int, int]] | None = None,
    hessian: str = "exact",
    rank: int = 64,
    lowrank_passes: int = 2,
    curvature: str = "hessian",
    layers: int | None = None,
    seed: int = 0,
) -> Tensor:
    """S_u = (1/m) Σ_k ‖(C P_u R_u[k])_u‖_1 with C the Hessian (or Gauss–Newton matrix) per unit
    ``[len(units)]`` (SPEC §6); ``units=None``: every token, S_i of SPEC §2 ``[t]``."""
    prob = CurvatureProblem(adapter, ids, target_id, layers)
    t, d = prob.point.shape
    check_probes(probes, t, d)
    probes = probes.to(prob.point)
    m = probes.shape[1]
    units = [(i, i + 1) for i in range(t)] if units is None else list(units)
    S = torch.zeros(len(units), dtype=prob.point.dtype, device=prob.point.device)
    if hessian == "exact":
        for j, (a, b) in enumerate(units):
            for k in range(m):
                v = torch.zeros_like(prob.point)
                v[a:b] = probes[a:b, k]  # the unit's tokens' probes k, stacked
                S[j] += prob.matvec(v, curvature)[a:b].abs().sum()
        return S / m
    if hessian != "lowrank":
        raise HetaInputError(f"unknown hessian mode {hessian!r}")
    # Randomized range finder (Halko et al.): Y = C Ω, Q = orth(Y), C ≈ Q B Q^T with B = Q^T C Q (two
    # passes) or B = sym((Q^T Y)(Q^T Ω)^+) (one pass, SPEC §2).
    omega = draw_range_finder(t, d, rank, seed).to(prob.point)
    Y = torch.stack([prob.matvec(omega[:, j].reshape(t, d), curvature).reshape(-1) for j in range(rank)], 1)
    Q, _ = torch.linalg.qr(Y)
    if lowrank_passes == 2:
        CQ = torch.stack([prob.matvec(Q[:, j].reshape(t, d), curvature).reshape(-1) for j in range(Q.shape[1])], 1)
        B = Q.T @ CQ
    elif lowrank_passes == 1:
        B = (Q.T @ Y) @ torch.linalg.pinv(Q.T @ omega)
    else:
        raise HetaInputError(f"lowrank_passes must be 1 or 2, got {lowrank_passes}")
    B = 0.5 * (B + B.T)
    for j, (a, b) in enumerate(units):
        Qu = Q[a * d : b * d]  # rows of Q for the unit's block
        for k in range(m):
            S[j] += (Qu @ (B @ (Qu.T @ probes[a:b, k].reshape(-1)))).abs().sum()
    return S / m
