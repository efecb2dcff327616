"""The LM head as one formula, shared by the fused KL pass and the closed-form head curvature.

Both replace the model's own head call with ``s(h Wᵀ + b)``; each checks that this reproduces the model's
logits before relying on it (a model that scales its logits otherwise would silently give wrong numbers).
"""

from __future__ import annotations

import torch
from torch import Tensor


def head_check_tolerance(dtype: torch.dtype, floor: float) -> float:
    """Relative tolerance for checking :func:`head_logits` against the model's own logits in ``dtype``.

    ``floor`` in float32 and wider; in half precision a few units of rounding (the two products may round
    differently), still far below what a missed logit transform (a scale, a cap) changes.
    """
    return max(floor, 4 * torch.finfo(dtype).eps)


def head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float) -> Tensor:
    """The LM head on final hidden states ``[R, d]``: ``s(h Wᵀ + b)``, s the final logit soft-cap (0: none)."""
    z = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)
    if softcap > 0:
        # Gemma-2 final logit soft-capping.
        z = softcap * torch.tanh(z / softcap)
    return z
