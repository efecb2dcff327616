"""Triton attention vector-matrix product: ``out[h, b, i] = sum_j w[h, b, j] * A^h[j, i]``.

``A^h`` is the causal softmax attention of query head ``h`` (GQA-aware, optional sliding window and
Gemma-2 logit soft-capping). It is never materialised: ``_row_stats_kernel`` computes each query row's
softmax max ``m_j`` and normaliser ``l_j`` flash-style (online over key tiles), then
``_vecmat_kernel`` owns one key tile, recomputes the score tiles of every query tile that can see it
and accumulates ``w[:, j] * exp(s[j, i] - m_j) / l_j``. Extra memory is O(H*n) for the statistics.

This is the one primitive behind both HETA rollouts (SPEC.md section 1); see heta_fast/rollout.py for
the pure-torch twin (``attn_vecmat_chunked``) and the float64 oracle (``attn_vecmat_ref``).
Import this module only as ``heta_fast.kernels.attn_vecmat`` (``heta_fast._triton.load_kernel_module``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from heta_fast._triton import skip_autotune

# Autotune lists. Keys: sequence length and head size (the loop trip counts and the tile width).
# The first entry is the only one used when HETA_FAST_SKIP_AUTOTUNE=1 or under TRITON_INTERPRET=1.
ROW_STATS_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
]
VECMAT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
]

# Finite "minus infinity" for the running max: a row whose keys in one tile are all masked keeps
# m = NEG_BIG and exp(-inf - NEG_BIG) = 0, exp(NEG_BIG - NEG_BIG) = 1, so no inf - inf = NaN ever appears
# (query rows past n, and rows whose visible keys all lie in later tiles, hit this).
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _tanh(x):
    # tanh through exp: saturates cleanly to +-1 (exp overflow -> inf -> 2/inf = 0) and needs no libdevice,
    # so it also runs in the interpreter. Absolute error ~1e-7, i.e. ~softcap*1e-7 on the logits.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _masked_scores(
    q,  # [BLOCK_M, BLOCK_D] query tile
    kT,  # [BLOCK_D, BLOCK_N] transposed key tile
    offs_m,  # [BLOCK_M] query positions j
    offs_n,  # [BLOCK_N] key positions i
    n,
    scaling,
    softcap,
    window,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Scores s[j, i] in fp32 exactly as the model computes them, -inf where key i is invisible to j."""
    s = tl.dot(q, kT, input_precision=INPUT_PRECISION, out_dtype=tl.float32) * scaling
    if HAS_SOFTCAP:
        # Gemma-2 order: soft-cap after scaling, before masking.
        s = softcap * _tanh(s / softcap)
    # Rows j >= n are masked too: otherwise exp(s) of padding rows could overflow and 0 * inf = NaN.
    visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < n)
    if HAS_WINDOW:
        visible = visible & (offs_m[:, None] - offs_n[None, :] < window)
    return tl.where(visible, s, float("-inf"))


@triton.jit
def _row_stats_kernel(
    # Pointers
    q_ptr,  # [H, n, dh] fp32/bf16/fp16, post-rotary queries
    k_ptr,  # [H_kv, n, dh] same dtype, post-rotary keys
    m_ptr,  # [H, n] fp32 out: row max of the scores
    l_ptr,  # [H, n] fp32 out: sum_i exp(s[j, i] - m_j)
    # Sizes
    n,
    group,  # H // H_kv: query head h reads kv head h // group
    scaling,
    softcap,
    window,
    # Strides
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mh,
    stride_mn,
    # Meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_h = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    kv_h = pid_h // group
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    q = tl.load(
        q_ptr + pid_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=(offs_m[:, None] < n) & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)

    # Causality: keys after the tile's last row are invisible; the window hides keys before
    # m0 - window + 1. Start at a BLOCK_N-aligned key so loads stay aligned.
    hi = tl.minimum(n, m0 + BLOCK_M)
    lo = 0
    if HAS_WINDOW:
        lo = (tl.maximum(m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT = tl.load(
            k_ptr + kv_h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=(offs_n[None, :] < n) & (offs_d[:, None] < HEAD_DIM),
            other=0.0,
        )
        s = _masked_scores(q, kT, offs_m, offs_n, n, scaling, softcap, window, HAS_SOFTCAP, HAS_WINDOW, INPUT_PRECISION)
        # Online softmax (flash-attention): rescale the running sum when the max grows.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_i = m_new

    row_mask = offs_m < n
    tl.store(m_ptr + pid_h * stride_mh + offs_m * stride_mn, m_i, mask=row_mask)
    tl.store(l_ptr + pid_h * stride_mh + offs_m * stride_mn, l_i, mask=row_mask)


@triton.jit
def _vecmat_kernel(
    # Pointers
    q_ptr,  # [H, n, dh] fp32/bf16/fp16
    k_ptr,  # [H_kv, n, dh] same dtype
    w_ptr,  # [H, B, n] any float dtype (stride 0 over H allowed: one vector shared by all heads)
    m_ptr,  # [H, n] fp32 row max from _row_stats_kernel
    l_ptr,  # [H, n] fp32 row normaliser from _row_stats_kernel
    out_ptr,  # [H, B, n] fp32 out
    # Sizes
    n,
    n_vec,  # B
    group,
    scaling,
    softcap,
    window,
    # Strides
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_wh,
    stride_wb,
    stride_wn,
    stride_mh,
    stride_mn,
    stride_oh,
    stride_ob,
    stride_on,
    # Meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_h = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // group
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)

    # The key tile stays in registers for the whole loop over query tiles.
    kT = tl.load(
        k_ptr + kv_h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
        mask=(offs_n[None, :] < n) & (offs_d[:, None] < HEAD_DIM),
        other=0.0,
    )
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)

    # Causality: query rows before the key tile cannot see it, so start at the query tile holding n0.
    # Window: row j sees key i only if j < i + window, so rows >= n0 + BLOCK_N - 1 + window are skipped.
    lo = (n0 // BLOCK_M) * BLOCK_M
    hi = n
    if HAS_WINDOW:
        hi = tl.minimum(n, n0 + BLOCK_N - 1 + window)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_mask = offs_m < n
        q = tl.load(
            q_ptr + pid_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
            mask=row_mask[:, None] & (offs_d[None, :] < HEAD_DIM),
            other=0.0,
        )
        s = _masked_scores(q, kT, offs_m, offs_n, n, scaling, softcap, window, HAS_SOFTCAP, HAS_WINDOW, INPUT_PRECISION)
        m_j = tl.load(m_ptr + pid_h * stride_mh + offs_m * stride_mn, mask=row_mask, other=0.0)
        l_j = tl.load(l_ptr + pid_h * stride_mh + offs_m * stride_mn, mask=row_mask, other=1.0)
        # Probabilities of this tile, normalised with the full-row statistics.
        p = tl.exp(s - m_j[:, None]) * (1.0 / l_j)[:, None]
        w = tl.load(
            w_ptr + pid_h * stride_wh + offs_b[:, None] * stride_wb + offs_m[None, :] * stride_wn,
            mask=(offs_b[:, None] < n_vec) & row_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        # fp32 "ieee" dot: p and w are probabilities/flow masses whose small entries matter; TF32 would
        # cost ~1e-3 relative error. B is tiny (1..L), so this dot is cheap next to the score dot.
        acc += tl.dot(w, p, input_precision="ieee")

    tl.store(
        out_ptr + pid_h * stride_oh + offs_b[:, None] * stride_ob + offs_n[None, :] * stride_on,
        acc,
        mask=(offs_b[:, None] < n_vec) & (offs_n[None, :] < n),
    )


_row_stats_kernel_tuned = triton.autotune(configs=ROW_STATS_CONFIGS, key=["n", "HEAD_DIM"])(_row_stats_kernel)
_vecmat_kernel_tuned = triton.autotune(configs=VECMAT_CONFIGS, key=["n", "HEAD_DIM", "BLOCK_B"])(_vecmat_kernel)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, sliding_window: int | None) -> None:
    if q.dim() != 3 or k.dim() != 3 or w.dim() != 3:
        raise ValueError(f"expected q [H,n,dh], k [H_kv,n,dh], w [H,B,n]; got {q.shape}, {k.shape}, {w.shape}")
    H, n, dh = q.shape
    if k.shape[1:] != (n, dh) or H % k.shape[0] != 0:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} (need H % H_kv == 0)")
    if w.shape[0] != H or w.shape[2] != n:
        raise ValueError(f"w {tuple(w.shape)} must be [H={H}, B, n={n}]")
    if not (q.device == k.device == w.device):
        raise ValueError("q, k, w must be on the same device")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")


def attn_vecmat_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    input_precision: str | None = None,
) -> torch.Tensor:
    """``out[h, b, i] = sum_j w[h, b, j] * A^h[j, i]`` without materialising ``A``.

    Args:
        q (Tensor): queries of shape `[H, n, dh]` (fp32/bf16/fp16), post-rotary, as the attention uses them.
        k (Tensor): keys of shape `[H_kv, n, dh]`, same dtype; query head h reads kv head h // (H / H_kv).
        w (Tensor): weight vectors of shape `[H, B, n]` over query rows (any strides, e.g. expanded over H).
        scaling (float): score scale (usually dh**-0.5).
        sliding_window (int | None): key i visible from query j iff j - window < i <= j.
        softcap (float | None): logit soft-cap c, scores = c * tanh(scores / c) after scaling.
        block_m, block_n (int | None): fixed tile sizes (powers of two >= 16); bypasses autotune.
        input_precision (str | None): dot precision of the score tile; default "ieee" for fp32 inputs
            (exact fp32), ignored for bf16/fp16. Pass "tf32" for speed when ~1e-3 error is acceptable.

    Returns:
        Tensor: `[H, B, n]` float32. Statistics and accumulation are fp32 whatever the input dtype.
    """
    _check_inputs(q, k, w, sliding_window)
    H, n, dh = q.shape
    B = w.shape[1]
    out = torch.empty((H, B, n), device=q.device, dtype=torch.float32)
    if n == 0 or B == 0 or H == 0:
        return out.zero_()
    k = k.to(q.dtype)
    group = H // k.shape[0]
    row_max = torch.empty((H, n), device=q.device, dtype=torch.float32)
    row_sum = torch.empty_like(row_max)

    block_d = max(16, triton.next_power_of_2(dh))  # tl.dot needs every dim >= 16
    # Vectors per program: B is 1 (flow) or up to L (chain); tile it over grid axis 2 beyond 64.
    block_b = min(64, max(16, triton.next_power_of_2(B)))
    if input_precision is None:
        input_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common = dict(
        HEAD_DIM=dh,
        BLOCK_D=block_d,
        HAS_SOFTCAP=softcap is not None,
        HAS_WINDOW=sliding_window is not None,
        INPUT_PRECISION=input_precision,
    )
    softcap_arg = float(softcap) if softcap is not None else 1.0
    window_arg = int(sliding_window) if sliding_window is not None else n

    fixed = block_m is not None or block_n is not None or skip_autotune()
    if fixed:
        bm = block_m or ROW_STATS_CONFIGS[0].kwargs["BLOCK_M"]
        bn = block_n or ROW_STATS_CONFIGS[0].kwargs["BLOCK_N"]
        stats_kernel, vec_kernel = _row_stats_kernel, _vecmat_kernel
        stats_meta = vec_meta = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=2)
    else:
        stats_kernel, vec_kernel = _row_stats_kernel_tuned, _vecmat_kernel_tuned
        stats_meta = vec_meta = {}

    def stats_grid(meta):
        return (H, triton.cdiv(n, meta["BLOCK_M"]))

    stats_kernel[stats_grid](
        q, k, row_max, row_sum,
        n, group, float(scaling), softcap_arg, window_arg,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        row_max.stride(0), row_max.stride(1),
        **common, **stats_meta,
    )  # fmt: skip

    def vec_grid(meta):
        return (H, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(B, block_b))

    vec_kernel[vec_grid](
        q, k, w, row_max, row_sum, out,
        n, B, group, float(scaling), softcap_arg, window_arg,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        w.stride(0), w.stride(1), w.stride(2),
        row_max.stride(0), row_max.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        BLOCK_B=block_b, **common, **vec_meta,
    )  # fmt: skip
    return out
