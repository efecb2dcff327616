"""Baseline attributions computed through the same :class:`~heta_fast.hf.ModelAdapter` HETA uses.

Every baseline explains the same quantity as HETA, ``g(X) = log π[target]`` at the last context row, and
returns one non-negative score per context token (signed methods report magnitudes, so segment shares
and DSA are defined; the sign convention is stated per function).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..errors import HetaInputError


def _target_logprob(adapter, X: Tensor, target_id: int) -> Tensor:
    """``log π[target]`` at the last row, ``[B]`` for ``X [B, t, d]``."""
    return torch.log_softmax(adapter.last_logits(X).float(), -1)[..., target_id]


def target_logprob_grad(adapter, X: Tensor, target_id: int) -> Tensor:
    """∇_X log π[target] at the last position, for a batch of rows X ``[..., n, d]``."""
    with torch.enable_grad():
        Xg = X.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_target_logprob(adapter, Xg, target_id).sum(), Xg)
    return g


def random_scores(t: int, seed: int = 0) -> Tensor:
    """Uniform random scores: the floor every real method should beat."""
    return torch.rand(t, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def attention_rollout(adapter, ids: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) into the last position.

    ``Â^l = ½ I + ½ mean_h A^l``; the product ``Â^L … Â^1`` read at the last row. Rows of every ``Â^l`` sum to
    one, so the result sums to one over the context.
    """
    X = adapter.embed(ids)
    with torch.no_grad(), adapter.record(keep_probs=True) as rec:
        adapter.forward(X)
    t = ids.numel()
    eye = torch.eye(t, dtype=torch.float64)
    rho = eye[t - 1]  # row vector: flow from the last position down through the layers
    for j in reversed(range(adapter.num_layers)):
        A = rec.layers[j].probs.double().mean(0).cpu()
        rho = rho @ (0.5 * eye + 0.5 * A)
    return rho


def gradient_norm(adapter, ids: Tensor, target_id: int) -> Tensor:
    """``‖∂g/∂X_i‖₂`` per token (saliency)."""
    return target_logprob_grad(adapter, adapter.embed(ids), target_id).double().norm(dim=-1).cpu()


def input_x_gradient(adapter, ids: Tensor, target_id: int, *, signed: bool = False) -> Tensor:
    """``|Σ_d X_id · ∂g/∂X_id|`` per token (magnitude; ``signed=True`` keeps the sign)."""
    X = adapter.embed(ids)
    val = (X.double() * target_logprob_grad(adapter, X, target_id).double()).sum(-1).cpu()
    return val if signed else val.abs()


def integrated_gradients(
    adapter, ids: Tensor, target_id: int, *, steps: int = 16, batch_size: int = 8, signed: bool = False
) -> Tensor:
    """Integrated gradients from the all-zero baseline (the same "erased" input the metrics use).

    Midpoint Riemann sum with ``steps`` points; ``Σ_i signed_i ≈ g(X) - g(0)`` (completeness). Returns
    ``|Σ_d IG_id|`` per token unless ``signed``.
    """
    if steps < 1:
        raise HetaInputError(f"integrated gradients needs steps >= 1, got {steps}")
    X = adapter.embed(ids).detach()
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    total = torch.zeros_like(X, dtype=torch.float64)
    for i in range(0, steps, batch_size):
        a = alphas[i : i + batch_size].to(X.dtype).to(X.device)
        total += target_logprob_grad(adapter, a[:, None, None] * X[None], target_id).double().sum(0)
    val = (X.double() * total / steps).sum(-1).cpu()
    return val if signed else val.abs()


def leave_one_out(adapter, ids: Tensor, target_id: int, *, batch_size: int = 8, signed: bool = False) -> Tensor:
    """Drop of ``log π[target]`` when token i's row is zeroed: ``g(X) - g(X^{(i)})``, clamped at 0 unless signed.

    Zeroing is the same erasure as HETA's default ``mask="zero"`` and as the metrics.
    """
    X = adapter.embed(ids).detach()
    t = X.shape[0]
    with torch.no_grad():
        base = _target_logprob(adapter, X, target_id).double()
        drops = []
        for i in range(0, t, batch_size):
            rows = torch.arange(i, min(t, i + batch_size))
            Xb = X[None].repeat(rows.numel(), 1, 1)
            Xb[torch.arange(rows.numel()), rows] = 0
            drops.append(base - _target_logprob(adapter, Xb, target_id).double())
    val = torch.cat(drops).cpu()
    return val if signed else val.clamp_min(0)


@contextlib.contextmanager
def perturbed_embeddings(adapter, ids: Tensor, noise: Tensor):
    """Inside the block, ``adapter.embed(prefix of ids)`` returns ``X + noise`` for that prefix.

    Every method (HETA's engine included) reads X through ``adapter.embed``, so this perturbs X per
    position for all of them without touching the model weights. Calls on other id sequences (a mask
    token's embedding) are left unchanged.
    """
    original = adapter.embed
    full = ids.detach()

    def noisy(q: Tensor) -> Tensor:
        X = original(q)
        n = q.numel()
        if q.ndim == 1 and n <= full.numel() and torch.equal(q, full[:n]):
            return X + noise[:n].to(X.dtype)
        return X

    adapter.embed = noisy
    try:
        yield adapter
    finally:
        del adapter.embed  # the instance attribute goes; the class method is visible again


BASELINES = {
    "random": "uniform random scores (sanity floor)",
    "rollout": "attention rollout (Abnar & Zuidema 2020)",
    "grad_norm": "gradient L2 norm per token",
    "input_x_grad": "|input x gradient| per token",
    "integrated_gradients": "|integrated gradients| per token, zero baseline, 16 steps",
    "loo": "leave-one-out drop of log p(target), zero row, clamped at 0",
}


def baseline_scores(name: str, adapter, ids: Tensor, target_id: int, *, seed: int = 0, ig_steps: int = 16) -> Tensor:
    """Scores of baseline ``name`` (one of :data:`BASELINES`) for context ``ids`` and ``target_id``."""
    if name == "random":
        return random_scores(ids.numel(), seed)
    if name == "rollout":
        return attention_rollout(adapter, ids)
    if name == "grad_norm":
        return gradient_norm(adapter, ids, target_id)
    if name == "input_x_grad":
        return input_x_gradient(adapter, ids, target_id)
    if name == "integrated_gradients":
        return integrated_gradients(adapter, ids, target_id, steps=ig_steps)
    if name == "loo":
        return leave_one_out(adapter, ids, target_id)
    raise HetaInputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
