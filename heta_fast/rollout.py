"""HETA causal-gate rollouts without n x n attention maps (SPEC.md section 1).

Both rollouts reduce to one primitive, the attention vector-matrix product

    attn_vecmat(q, k, w)[h, b, i] = sum_j w[h, b, j] * A^h[j, i],

where ``A^h`` is the causal softmax attention of query head ``h`` recomputed from the layer's queries and
keys (GQA, sliding window and Gemma-2 soft-capping included). Three implementations:

- :func:`attn_vecmat_ref`: float64, materialises ``A`` (the oracle; small n only).
- :func:`attn_vecmat_chunked`: pure torch, query/key tiles, O(H * chunk^2) extra memory (CPU path and
  fallback everywhere).
- ``heta_fast.kernels.attn_vecmat.attn_vecmat_triton``: flash-style Triton kernels (GPU fast path; also
  runs on CPU tensors under ``TRITON_INTERPRET=1``).

Drivers over layers: :func:`flow_rollout` (``rollout="flow"``, the default) and :func:`chain_rollout`
(``rollout="reference"``, the official code's per-head chain), with float64 materialising references
:func:`flow_rollout_ref` and :func:`chain_rollout_ref` that follow SPEC.md literally.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from heta_fast._triton import interpret_mode, load_kernel_module, triton_available, triton_unavailable_reason

__all__ = [
    "DEFAULT_MEM_BUDGET_BYTES",
    "LayerAttention",
    "attention_probs_ref",
    "attn_vecmat",
    "attn_vecmat_chunked",
    "attn_vecmat_ref",
    "chain_rollout",
    "chain_rollout_ref",
    "flow_rollout",
    "flow_rollout_ref",
    "resolve_backend",
]

Backend = Literal["auto", "torch", "triton", "reference"]
_BACKENDS = ("auto", "torch", "triton", "reference")

# Extra memory the chunked torch path may use for its score tiles. 64 MiB keeps tiles of a few hundred
# rows even at 32 heads (big enough for BLAS to be efficient) and is negligible next to any model.
DEFAULT_MEM_BUDGET_BYTES = 64 * 2**20
# fp32 tensors of tile size alive at once in attn_vecmat_chunked (scores, exp, matmul temporaries).
_LIVE_TILES = 4


@dataclass
class LayerAttention:
    """What one attention layer needs to recompute its probabilities.

    Attributes:
        q (Tensor): queries of shape `[H, n, dh]`, post-rotary, exactly as the attention uses them.
        k (Tensor): keys of shape `[H_kv, n, dh]`; query head h reads kv head h // (H / H_kv).
        scaling (float): score scale (dh**-0.5 for most models; Gemma-2 uses query_pre_attn_scalar**-0.5).
        sliding_window (int | None): key i is visible from query j iff j - sliding_window < i <= j.
        softcap (float | None): attention-logit soft-cap c (scores = c * tanh(scores / c)), Gemma-2.
    """

    q: Tensor
    k: Tensor
    scaling: float
    sliding_window: int | None = None
    softcap: float | None = None

    def __post_init__(self) -> None:
        if self.q.dim() != 3 or self.k.dim() != 3:
            raise ValueError(
                f"q must be [H, n, dh] and k [H_kv, n, dh]; got {tuple(self.q.shape)}, {tuple(self.k.shape)}"
            )
        if self.k.shape[1:] != self.q.shape[1:] or self.q.shape[0] % self.k.shape[0] != 0:
            raise ValueError(f"k {tuple(self.k.shape)} does not match q {tuple(self.q.shape)} (need H % H_kv == 0)")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")

    @property
    def num_heads(self) -> int:
        return self.q.shape[0]

    @property
    def seq_len(self) -> int:
        return self.q.shape[1]

    def truncated(self, n: int) -> LayerAttention:
        """The same layer on positions 0..n-1 (exact for causal attention: rows < n never see keys >= n)."""
        return LayerAttention(self.q[:, :n], self.k[:, :n], self.scaling, self.sliding_window, self.softcap)


# --------------------------------------------------------------------------------------------------
# attn_vecmat: reference, chunked torch, dispatch
# --------------------------------------------------------------------------------------------------


def attention_probs_ref(
    q: Tensor,
    k: Tensor,
    *,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Materialised causal attention probabilities ``A^h[j, i]`` (oracle; O(H n^2) memory).

    Args:
        q (Tensor): `[H, n, dh]`. k (Tensor): `[H_kv, n, dh]`.
        scaling, sliding_window, softcap: as in :class:`LayerAttention`.
        dtype: computation and output dtype (float64 for the oracle, float32 for the benchmark baseline).

    Returns:
        Tensor: `[H, n, n]` in ``dtype``; rows sum to 1, entries with i > j or j - i >= window are 0.
    """
    H, n, _ = q.shape
    kk = k.to(dtype).repeat_interleave(H // k.shape[0], dim=0)
    s = torch.matmul(q.to(dtype), kk.transpose(-1, -2)) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)  # Gemma-2: after scaling, before masking
    s = s.masked_fill(~_visible(0, n, 0, n, sliding_window, q.device), float("-inf"))
    return torch.softmax(s, dim=-1)


def attn_vecmat_ref(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> Tensor:
    """float64 oracle of ``out[h, b, i] = sum_j w[h, b, j] * A^h[j, i]``; materialises ``A``.

    Args:
        q (Tensor): `[H, n, dh]`. k (Tensor): `[H_kv, n, dh]`. w (Tensor): `[H, B, n]`.

    Returns:
        Tensor: `[H, B, n]` float64.
    """
    _check_vecmat_inputs(q, k, w)
    A = attention_probs_ref(q, k, scaling=scaling, sliding_window=sliding_window, softcap=softcap)
    return torch.matmul(w.to(torch.float64), A)


def _visible(j0: int, j1: int, i0: int, i1: int, window: int | None, device) -> Tensor:
    """Bool mask `[j1 - j0, i1 - i0]`: key i visible from query j (i <= j, and j - i < window if set)."""
    j = torch.arange(j0, j1, device=device)[:, None]
    i = torch.arange(i0, i1, device=device)[None, :]
    vis = i <= j
    if window is not None:
        vis &= (j - i) < window
    return vis


def _chunk_for_budget(num_heads: int, n: int, mem_budget_bytes: int) -> int:
    """Largest tile edge C (multiple of 16 when > 16) with _LIVE_TILES fp32 [H, C, C] tiles in budget."""
    c = int(math.sqrt(max(mem_budget_bytes, 1) / (_LIVE_TILES * 4 * max(num_heads, 1))))
    c = max(16, c // 16 * 16)
    return min(c, max(n, 1))


def attn_vecmat_chunked(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    chunk_size: int | None = None,
    mem_budget_bytes: int = DEFAULT_MEM_BUDGET_BYTES,
) -> Tensor:
    """``out[h, b, i] = sum_j w[h, b, j] * A^h[j, i]`` in pure torch, tile by tile.

    For each query chunk, a first sweep over its visible key chunks computes the softmax row max and
    normaliser online (flash-attention style); a second sweep recomputes each score tile and adds
    ``(w / l) @ exp(s - m)`` to the output columns of that key chunk. Key chunks that are entirely causal-
    or window-masked for the query chunk are skipped. Extra memory is O(H * C^2 + H * (B + dh) * n).

    Args:
        q (Tensor): queries `[H, n, dh]` (any float dtype; computed in fp32).
        k (Tensor): keys `[H_kv, n, dh]`; query head h reads kv head h // (H / H_kv).
        w (Tensor): weights `[H, B, n]` over query rows (may be an expanded view).
        scaling, sliding_window, softcap: as in :class:`LayerAttention`.
        chunk_size (int | None): tile edge C; default from ``mem_budget_bytes``.
        mem_budget_bytes (int): target for the tile temporaries (about 4 fp32 tiles of `[H, C, C]`).

    Returns:
        Tensor: `[H, B, n]` float32 (fp32 accumulation).
    """
    _check_vecmat_inputs(q, k, w)
    H, n, dh = q.shape
    H_kv = k.shape[0]
    G = H // H_kv
    B = w.shape[1]
    out = torch.zeros((H_kv, G, B, n), device=q.device, dtype=torch.float32)
    if n == 0 or B == 0 or H == 0:
        return out.reshape(H, B, n)
    C = chunk_size if chunk_size is not None else _chunk_for_budget(H, n, mem_budget_bytes)
    C = max(1, min(int(C), n))

    # GQA without copying keys: view query heads as [H_kv, G] and broadcast k over G.
    qf = q.to(torch.float32).reshape(H_kv, G, n, dh)
    kT = k.to(torch.float32).transpose(-1, -2).unsqueeze(1)  # [H_kv, 1, dh, n]
    wf = w.to(torch.float32).reshape(H_kv, G, B, n)

    def scores(j0: int, j1: int, i0: int, i1: int) -> Tensor:
        s = torch.matmul(qf[:, :, j0:j1], kT[..., i0:i1])  # [H_kv, G, cq, ck]
        s.mul_(scaling)
        if softcap is not None:
            s.div_(softcap).tanh_().mul_(softcap)  # Gemma-2: after scaling, before masking
        # Tiles wholly below the diagonal and inside the window (most of them for long n) need no mask.
        fully_visible = i1 - 1 <= j0 and (sliding_window is None or (j1 - 1) - i0 < sliding_window)
        if not fully_visible:
            s.masked_fill_(~_visible(j0, j1, i0, i1, sliding_window, q.device), float("-inf"))
        return s

    for j0 in range(0, n, C):
        j1 = min(n, j0 + C)
        # Visible keys of this query chunk: [lo, j1) (causal), lo > 0 only with a sliding window.
        lo = 0 if sliding_window is None else max(0, j0 - sliding_window + 1)
        key_tiles = [(i0, min(j1, i0 + C)) for i0 in range(lo, j1, C)]

        # Pass 1: row statistics, online over key tiles. m starts finite so rows that are fully masked
        # in a tile give exp(-inf) = 0, never exp(-inf + inf) = NaN; every row j sees at least key j, so
        # the final m is a real score. Scores are exponentiated in place: one live tile.
        m = torch.full((H_kv, G, j1 - j0), -1.0e30, device=q.device)
        l = torch.zeros_like(m)
        for i0, i1 in key_tiles:
            e = scores(j0, j1, i0, i1)
            m_new = torch.maximum(m, e.amax(dim=-1))
            e = e.sub_(m_new.unsqueeze(-1)).exp_()
            l = l * torch.exp(m - m_new) + e.sum(dim=-1)
            m = m_new
        # With a single key tile, e = exp(s - m) already uses the final m: pass 2 reuses it.
        reuse = len(key_tiles) == 1

        # Pass 2: out[..., i] += sum_j (w_j / l_j) exp(s[j, i] - m_j).
        w_over_l = wf[..., j0:j1] / l.unsqueeze(-2)  # [H_kv, G, B, cq]
        for i0, i1 in key_tiles:
            if not reuse:
                e = scores(j0, j1, i0, i1).sub_(m.unsqueeze(-1)).exp_()
            out[..., i0:i1] += torch.matmul(w_over_l, e)
        del e
    return out.reshape(H, B, n)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Pick the concrete backend ("torch" | "triton" | "reference") for tensors on ``device``.

    ``auto`` honours ``HETA_FAST_BACKEND`` when it names one of these backends, else picks Triton for
    CUDA tensors when it is available and the chunked torch path otherwise. An explicit backend that
    cannot run raises with the reason.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        env = os.environ.get("HETA_FAST_BACKEND", "auto")
        if env in ("torch", "triton", "reference"):
            backend = env
        else:
            return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        reason = triton_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        if device.type != "cuda" and not interpret_mode():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton kernels)"
            )
    return backend


def attn_vecmat(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Attention vector-matrix product ``out[h, b, i] = sum_j w[h, b, j] * A^h[j, i]``, dispatched.

    Args:
        q (Tensor): `[H, n, dh]`. k (Tensor): `[H_kv, n, dh]`. w (Tensor): `[H, B, n]`.
        scaling, sliding_window, softcap: as in :class:`LayerAttention`.
        backend: "auto" | "torch" (chunked) | "triton" | "reference" (float64, materialising).
        chunk_size (int | None): tile edge of the torch backend.

    Returns:
        Tensor: `[H, B, n]` float32.
    """
    kind = resolve_backend(backend, q.device)
    if kind == "triton":
        kernel = load_kernel_module("attn_vecmat")
        return kernel.attn_vecmat_triton(q, k, w, scaling, sliding_window, softcap)
    if kind == "reference":
        out = attn_vecmat_ref(q, k, w, scaling=scaling, sliding_window=sliding_window, softcap=softcap)
        return out.to(torch.float32)
    return attn_vecmat_chunked(
        q, k, w, scaling=scaling, sliding_window=sliding_window, softcap=softcap, chunk_size=chunk_size
    )


def _check_vecmat_inputs(q: Tensor, k: Tensor, w: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or w.dim() != 3:
        raise ValueError(f"expected q [H,n,dh], k [H_kv,n,dh], w [H,B,n]; got {q.shape}, {k.shape}, {w.shape}")
    H, n, dh = q.shape
    if k.shape[1:] != (n, dh) or H % k.shape[0] != 0:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} (need H % H_kv == 0)")
    if w.shape[0] != H or w.shape[2] != n:
        raise ValueError(f"w {tuple(w.shape)} must be [H={H}, B, n={n}]")


# --------------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------------


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
    kind = resolve_backend(backend, device)
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
    kind = resolve_backend(backend, device)
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
