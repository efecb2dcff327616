"""Causal attention of a suffix behind a cached prefix, without an explicit mask (the KL pass's shape).

The masked KL pass runs queries a … n−1 against keys 0 … n−1: every query sees the whole prefix 0 … a−1
and the suffix causally. Handed to SDPA as one call this needs an explicit [q, k] mask, and torch's CPU
kernel then computes every score block, including the half of the suffix that the mask throws away, and
tests the mask on each: 2.3x the time of the same attention with ``is_causal`` (8,192 keys, measured in
benchmarks/RESULTS.md). Split in two fused calls instead, prefix (no mask) and suffix (``is_causal``, square),
each returning its log-sum-exp, the two partial softmaxes merge exactly:

    out = (o₁ · e^{l₁} + o₂ · e^{l₂}) / (e^{l₁} + e^{l₂}).

Only torch's CPU flash kernel returns the log-sum-exp through a stable signature, so this path is for CPU
tensors; elsewhere :func:`split_causal_attention` returns None and the caller keeps SDPA with the mask.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def causal_bool_mask(q_len: int, k_len: int, device) -> Tensor:
    """[q_len, k_len] True where query row j (at absolute position k_len - q_len + j) may see key i."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos


def split_causal_attention(query: Tensor, key: Tensor, value: Tensor, scaling: float) -> Tensor | None:
    """Bottom-right causal attention for q_len < k_len, as prefix + causal suffix; None if unavailable.

    Shapes ``[B, H, q, dh]`` / ``[B, H, k, dh]`` (key/value heads already repeated to the query's).
    Query row j (absolute position k − q + j) sees keys 0 … k − q + j.
    """
    if _cpu_flash is None or query.device.type != "cpu":
        return None
    q_len, k_len = query.shape[-2], key.shape[-2]
    a = k_len - q_len
    o1, l1 = _cpu_flash(query, key[..., :a, :], value[..., :a, :], scale=scaling)
    o2, l2 = _cpu_flash(query, key[..., a:, :], value[..., a:, :], is_causal=True, scale=scaling)
    total = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - total)[..., None]
    w2 = torch.exp(l2 - total)[..., None]
    return (o1 * w1 + o2 * w2).to(query.dtype)


class CausalMaskCheck:
    """Whether a boolean mask is exactly bottom-right causal, checked once per mask tensor.

    transformers builds one mask per forward and hands the same tensor to every layer, so the O(q·k)
    comparison runs once per forward, not once per layer. Sliding windows, padding or any other pattern
    compare unequal and keep the explicit mask.
    """

    def __init__(self) -> None:
        self._mask: weakref.ref | None = None
        self._answer = False

    def __call__(self, mask: Tensor, q_len: int, k_len: int) -> bool:
        if self._mask is not None and self._mask() is mask:
            return self._answer
        answer = False
        if mask.dtype == torch.bool and mask.shape[-2:] == (q_len, k_len):
            answer = bool((mask == causal_bool_mask(q_len, k_len, mask.device)).all())
        self._mask, self._answer = weakref.ref(mask), answer
        return answer
