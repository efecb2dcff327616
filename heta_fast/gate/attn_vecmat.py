"""The gate's one primitive, the attention vector–matrix product, without n × n attention maps.

    attn_vecmat(q, k, w)[h, b, i] = sum_j w[h, b, j] * A^h[j, i],

where ``A^h`` is the causal softmax attention of query head ``h`` recomputed from the layer's queries and
keys (GQA, sliding window and Gemma-2 soft-capping included). Three implementations, one dispatcher
(:func:`attn_vecmat`, backends chosen by :func:`heta_fast.backends.resolve`):

- :func:`attn_vecmat_ref`: float64, materialises ``A`` (the oracle; small n only).
- :func:`attn_vecmat_chunked`: pure torch, query/key tiles, O(H * chunk^2) extra memory (CPU path and
  fallback everywhere).
- ``heta_fast.kernels.attn_vecmat.attn_vecmat_triton``: flash-style Triton kernels (GPU fast path; also
  runs on CPU tensors under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .. import backends
from .._triton import load_kernel_module

__all__ = [
    "DEFAULT_MEM_BUDGET_BYTES",
    "LayerAttention",
    "attention_probs_ref",
    "attn_vecmat",
    "attn_vecmat_chunked",
    "attn_vecmat_ref",
]

Backend = Literal["auto", "torch", "triton", "reference"]

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
    kind = backends.resolve("attn_vecmat", backend, q.device)
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
