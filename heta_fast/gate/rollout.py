"""HETA causal-gate rollouts over layers (SPEC §1), built on :func:`heta_fast.gate.attn_vecmat.attn_vecmat`.

:func:`flow_rollout` (``rollout="flow"``, the default) and :func:`chain_rollout` (``rollout="reference"``,
the official code's per-head chain) never form n × n maps; :func:`flow_rollout_ref` and
:func:`chain_rollout_ref` are their float64 materialising references, following SPEC.md literally.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import backends
from .attn_vecmat import Backend, LayerAttention, attention_probs_ref, attn_vecmat

__all__ = ["chain_rollout", "chain_rollout_ref", "flow_rollout", "flow_rollout_ref"]

def _check_layers(layers: Sequence[LayerAttention], p: int, last_k: int | None) -> tuple[int, int, int, int]:
    """Validate and return (L, H, n, first computed layer index)."""
    if len(layers) == 0:
        raise ValueError("need at least one layer")
    L = len(layers)
    H, n = layers[0].num_heads, layers[0].seq_len
    for idx, layer in enumerate(layers):
        if layer.num_heads != H or layer.seq_len != n:
            raise ValueError(f"layer {idx}: q {tuple(layer.q.shape)} differs from layer 0 ({H} heads, n={n})")
    if not 0 <= p < n:
        raise ValueError(f"prediction position p={p} must satisfy 0 <= p < n={n}")
    if last_k is None:
        last_k = L
    if not 1 <= last_k <= L:
        raise ValueError(f"last_k={last_k} must be in [1, {L}]")
    return L, H, n, L - last_k


def flow_rollout(
    layers: Sequence[LayerAttention],
    p: int,
    last_k: int | None = None,
    *,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Target-conditioned flow rollout (``rollout="flow"``, SPEC.md section 1), no n x n matrices.

    ``rho^L = e_p``; top-down ``Phi^{l,h} = rho^l A^{l,h}`` (one attn_vecmat with B = 1, the same vector
    for every head) and ``rho^{l-1} = rho^l (I/2 + mean_h A^{l,h} / 2) = rho^l / 2 + mean_h Phi^{l,h} / 2``.
    Attention is causal and rho starts at p, so only positions 0..p are ever touched: every layer is
    truncated to p + 1 positions (exact) and the columns > p of Phi are zero.

    Args:
        layers: L layers, index 0 = first (bottom) layer; all with the same H and n.
        p (int): prediction position, 0 <= p < n.
        last_k (int | None): only the last k layers are computed; lower layers' Phi are zero.
        backend: "auto" | "torch" | "triton" | "reference" (see :func:`attn_vecmat`).
        chunk_size (int | None): tile edge of the torch backend (default from a 64 MiB budget).

    Returns:
        Tensor: Phi of shape `[L, H, n]` float32; ``Phi[l, h, i]`` = mass reaching token i via head h.
        Each computed ``Phi[l, h]`` sums to 1 (up to rounding).
    """
    L, H, n, first = _check_layers(layers, p, last_k)
    device = layers[0].q.device
    kind = backends.resolve("attn_vecmat", backend, device)
    Phi = torch.zeros((L, H, n), device=device, dtype=torch.float32)
    n_eff = p + 1
    rho = torch.zeros(n_eff, device=device, dtype=torch.float32)
    rho[p] = 1.0
    for l in range(L - 1, first - 1, -1):
        layer = layers[l].truncated(n_eff)
        w = rho.expand(H, 1, n_eff)  # one flow vector shared by all heads (stride 0, no copy)
        phi = attn_vecmat(
            layer.q, layer.k, w, scaling=layer.scaling, sliding_window=layer.sliding_window,
            softcap=layer.softcap, backend=kind, chunk_size=chunk_size,
        )[:, 0]  # fmt: skip
        Phi[l, :, :n_eff] = phi
        rho = 0.5 * rho + 0.5 * phi.mean(dim=0)
    return Phi


def chain_rollout(
    layers: Sequence[LayerAttention],
    p: int,
    last_k: int | None = None,
    *,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """The official code's per-head chain (``rollout="reference"``) as batched vector chains.

    For each head h: ``R_l = N_l R_{l-1}``, ``N_l = norm_rows(A^{l,h}/2 + I/2)``, ``Phi^{l,h} = R_l[p, :]
    = e_p N_l N_{l-1} ... N_first``. Going top-down we start a new vector ``e_p`` at every layer and multiply
    all active vectors by ``N_l`` (one attn_vecmat with B = number of active vectors, plus half the vector
    itself): O(L^2) vector-matrix products per head and O(L H n) memory instead of n x n matrices. The
    rows of ``A/2 + I/2`` sum to 1 by construction (attn_vecmat normalises each row exactly), so the row
    normalisation of the official code is the identity here. Positions > p are never reached (truncated).

    Args:
        layers: L layers, index 0 = first layer; all with the same H (any H_kv) and n.
        p (int): prediction position, 0 <= p < n.
        last_k (int | None): the chain starts at layer L - last_k (R = I below); lower layers' Phi are zero.
        backend: "auto" | "torch" | "triton" | "reference".
        chunk_size (int | None): tile edge of the torch backend.

    Returns:
        Tensor: Phi of shape `[L, H, n]` float32; each computed ``Phi[l, h]`` sums to 1.
    """
    L, H, n, first = _check_layers(layers, p, last_k)
    device = layers[0].q.device
    kind = backends.resolve("attn_vecmat", backend, device)
    Phi = torch.zeros((L, H, n), device=device, dtype=torch.float32)
    n_eff = p + 1
    e_p = torch.zeros((H, 1, n_eff), device=device, dtype=torch.float32)
    e_p[:, 0, p] = 1.0
    # V[:, b] is the chain vector of layer L-1-b, multiplied so far by N_{L-1-b} ... N_{l+1}.
    V = e_p.new_zeros((H, 0, n_eff))
    for l in range(L - 1, first - 1, -1):
        layer = layers[l].truncated(n_eff)
        V = torch.cat([V, e_p], dim=1)
        VA = attn_vecmat(
            layer.q, layer.k, V, scaling=layer.scaling, sliding_window=layer.sliding_window,
            softcap=layer.softcap, backend=kind, chunk_size=chunk_size,
        )  # fmt: skip
        V = 0.5 * VA + 0.5 * V
    # After the loop, V[:, b] = e_p N_{L-1-b} ... N_first = Phi^{L-1-b}.
    for b in range(V.shape[1]):
        Phi[L - 1 - b, :, :n_eff] = V[:, b]
    return Phi


def _e_p(n: int, p: int, dtype: torch.dtype, device) -> Tensor:
    e = torch.zeros(n, dtype=dtype, device=device)
    e[p] = 1.0
    return e


def flow_rollout_ref(
    layers: Sequence[LayerAttention], p: int, last_k: int | None = None, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """SPEC.md section 1 ``rollout="flow"`` literally, with materialised attention (oracle / baseline).

    ``A_hat^l = I/2 + mean_h A^{l,h} / 2``; ``rho^L = e_p``; ``Phi^{l,h} = rho^l A^{l,h}``;
    ``rho^{l-1} = rho^l A_hat^l``. Materialises one layer's `[H, n, n]` attention at a time.

    Args:
        layers, p, last_k: as in :func:`flow_rollout`.
        dtype: computation dtype (float64 = oracle; float32 = the materialising benchmark baseline).

    Returns:
        Tensor: `[L, H, n]` in ``dtype``.
    """
    L, H, n, first = _check_layers(layers, p, last_k)
    device = layers[0].q.device
    Phi = torch.zeros((L, H, n), dtype=dtype, device=device)
    eye = torch.eye(n, dtype=dtype, device=device)
    rho = _e_p(n, p, dtype, device)
    for l in range(L - 1, first - 1, -1):
        ly = layers[l]
        A = attention_probs_ref(
            ly.q, ly.k, scaling=ly.scaling, sliding_window=ly.sliding_window, softcap=ly.softcap, dtype=dtype
        )
        Phi[l] = torch.einsum("q,hqi->hi", rho, A)
        A_hat = 0.5 * eye + 0.5 * A.mean(dim=0)
        rho = rho @ A_hat
        del A, A_hat
    return Phi


def chain_rollout_ref(
    layers: Sequence[LayerAttention], p: int, last_k: int | None = None, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The official per-head chain literally: ``R_l = norm_rows(A^{l,h}/2 + I/2) R_{l-1}``, ``Phi = R_l[p]``.

    Materialises every layer's attention and the n x n products ``R_l`` (oracle; small n only).

    Args:
        layers, p, last_k: as in :func:`chain_rollout` (``R = I`` below layer L - last_k).
        dtype: computation dtype.

    Returns:
        Tensor: `[L, H, n]` in ``dtype``.
    """
    L, H, n, first = _check_layers(layers, p, last_k)
    device = layers[0].q.device
    Phi = torch.zeros((L, H, n), dtype=dtype, device=device)
    eye = torch.eye(n, dtype=dtype, device=device)
    R = eye.expand(H, n, n)
    for l in range(first, L):
        ly = layers[l]
        A = attention_probs_ref(
            ly.q, ly.k, scaling=ly.scaling, sliding_window=ly.sliding_window, softcap=ly.softcap, dtype=dtype
        )
        N = 0.5 * A + 0.5 * eye
        N = N / N.sum(dim=-1, keepdim=True)  # norm_rows, as the official code does
        R = N @ R  # head h of layer l chained to head h of layer l-1
        Phi[l] = R[:, p, :]
    return Phi
