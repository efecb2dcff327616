"""Torch references for ``heta_fast::kl_from_hidden`` (SPEC §3).

Given the final hidden states of R masked runs at the prediction position, the LM head and the
clean next-token log-distribution, compute every ``I = KL(π ‖ π⁽ʳ⁾)``.

- :func:`kl_from_hidden_ref` materialises the ``[R, V]`` logits in float64: the test oracle.
- :func:`kl_from_hidden_chunked` streams the vocabulary in blocks with an online log-sum-exp in
  float32, so it never holds more than ``[R, block_size]`` logits. It is the CPU/GPU fallback
  registered for the op when the compiled extension is absent, and it follows the same algorithm as
  the C++/CUDA kernels (``csrc/include/heta_fast/kl.h``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..hf.head import head_logits


def check_kl_args(
    hidden: Tensor, weight: Tensor, base_logp: Tensor, bias: Tensor | None, softcap: float, block_size: int
) -> None:
    """Raises ValueError/TypeError naming the problem (same checks as the C++ TORCH_CHECKs)."""
    for name, t in (("hidden", hidden), ("weight", weight), ("base_logp", base_logp), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"kl_from_hidden: {name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"kl_from_hidden: {name} must be floating point, got {t.dtype}")
    if hidden.dim() != 2:
        raise ValueError(f"kl_from_hidden: hidden must be [R, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"kl_from_hidden: weight must be [V, d], got shape {tuple(weight.shape)}")
    if base_logp.dim() != 1:
        raise ValueError(f"kl_from_hidden: base_logp must be [V], got shape {tuple(base_logp.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"kl_from_hidden: hidden has d={hidden.shape[1]} but weight has d={weight.shape[1]}")
    V = weight.shape[0]
    if V < 1:
        raise ValueError("kl_from_hidden: the vocabulary is empty (weight has V=0)")
    if base_logp.shape[0] != V:
        raise ValueError(f"kl_from_hidden: weight has V={V} but base_logp has V={base_logp.shape[0]}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != V):
        raise ValueError(f"kl_from_hidden: bias must be [V] with V={V}, got shape {tuple(bias.shape)}")
    devices = {t.device for t in (hidden, weight, base_logp, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"kl_from_hidden: tensors are on different devices: {sorted(map(str, devices))}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"kl_from_hidden: block_size must be an int >= 1, got {block_size!r}")
    if not math.isfinite(float(softcap)):
        raise ValueError(f"kl_from_hidden: softcap must be finite (0 disables it), got {softcap!r}")


def kl_from_hidden_ref(
    hidden: Tensor,
    weight: Tensor,
    base_logp: Tensor,
    bias: Tensor | None = None,
    softcap: float = 0.0,
) -> Tensor:
    """Float64 oracle: ``KL_r = Σ_v π_v (base_logp_v − log_softmax(z_r)_v)``, clamped at 0.

    Materialises the full logits; use only for tests and small shapes.

    Args:
        hidden (Tensor): final hidden states of the masked runs, shape `[R, d]`.
        weight (Tensor): LM-head weight, shape `[V, d]`.
        base_logp (Tensor): clean log-probabilities ``log_softmax(z_clean)``, shape `[V]`.
        bias (Tensor | None): LM-head bias, shape `[V]`.
        softcap (float): final-logit soft-cap ``z ← c·tanh(z/c)`` when ``> 0``.

    Returns:
        Tensor: float32 KL divergences, shape `[R]`.
    """
    h, w, lp = hidden.double(), weight.double(), base_logp.double()
    z = head_logits(h, w, None if bias is None else bias.double(), float(softcap))
    pi = lp.exp()
    # xlogy-style convention: entries with π = 0 contribute 0 (not 0·(−inf) = NaN).
    terms = torch.where(pi > 0, pi * (lp - torch.log_softmax(z, dim=-1)), torch.zeros_like(z))
    return terms.sum(-1).clamp_min(0).float()


def pi_constants(base_logp: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ π log π, Σ π)`` in float64 (0·log 0 := 0), shape `[]` each."""
    lp = base_logp.double()
    pi = lp.exp()
    return torch.where(pi > 0, pi * lp, torch.zeros_like(pi)).sum(), pi.sum()


def kl_from_hidden_chunked(
    hidden: Tensor,
    weight: Tensor,
    base_logp: Tensor,
    bias: Tensor | None = None,
    softcap: float = 0.0,
    block_size: int = 4096,
) -> Tensor:
    """Streamed float32 KL: ``Σπ log π − Σπ z + (Σπ)·logsumexp(z)``, clamped at 0.

    The vocabulary is processed in blocks of ``block_size``; each row keeps a running max ``m``, a
    running ``s = Σ exp(z − m)`` and a running ``Σ π z`` (float32). Only ``[R, block_size]``
    logits exist at a time. ``Σπ`` is 1 up to rounding; keeping it makes the identity exact for
    the literal definition. bf16/fp16 inputs are upcast (hidden once, weight per block).

    Args:
        hidden (Tensor): `[R, d]`, any floating dtype.
        weight (Tensor): `[V, d]`, any floating dtype.
        base_logp (Tensor): `[V]` clean log-probabilities.
        bias (Tensor | None): `[V]` or ``None``.
        softcap (float): soft-cap value, ``0`` disables.
        block_size (int): vocabulary block size (``>= 1``).

    Returns:
        Tensor: float32 KL divergences, shape `[R]`, on ``hidden``'s device.
    """
    check_kl_args(hidden, weight, base_logp, bias, softcap, block_size)
    R, V = hidden.shape[0], weight.shape[0]
    h = hidden.float()
    lp = base_logp.float()
    pi = lp.exp()
    # Only the masked_fill path handles π = 0 with z = −inf (0·(−inf) must count as 0).
    pi_zero = bool((pi == 0).any())
    plogp, psum = pi_constants(base_logp)

    m = torch.full((R,), float("-inf"), dtype=torch.float32, device=h.device)
    s = torch.zeros(R, dtype=torch.float32, device=h.device)
    dot = torch.zeros(R, dtype=torch.float32, device=h.device)
    for v0 in range(0, V, block_size):
        v1 = min(v0 + block_size, V)
        b = None if bias is None else bias[v0:v1].float()
        z = head_logits(h, weight[v0:v1].float(), b, float(softcap))  # [R, Bv]
        pib = pi[v0:v1]
        bmax = z.amax(dim=1)
        m_new = torch.maximum(m, bmax)
        # Shift by 0 where the max is still −inf, so exp(−inf − (−inf)) never yields NaN.
        shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        s = s * torch.exp(m - shift) + torch.exp(z - shift[:, None]).sum(dim=1)
        m = m_new
        if pi_zero:
            z = z.masked_fill(pib == 0, 0.0)
        dot = dot + z @ pib
    lse = m.double() + s.double().log()
    kl = plogp - dot.double() + psum * lse
    return kl.clamp_min(0).float()
