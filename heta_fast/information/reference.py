"""The KL term I (SPEC §3, §6) written as plainly as possible: the float64 oracle of
:mod:`heta_fast.information.batched`.

One full forward per masked token (or unit), exactly as the formula reads; slow on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..hf import ModelAdapter


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(π ‖ π') from log-probabilities (last dim), clamped at 0."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)


def information(adapter: ModelAdapter, ids: Tensor, mask_vec: Tensor,
                units: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """I_u = KL(π ‖ π^{(u)}), one full forward per unit with all its rows masked: ``[len(units)]``
    (SPEC §6); ``units=None`` = every token, I_i of SPEC §3: ``[t]``."""
    X = adapter.embed(ids)
    if units is None:
        units = [(i, i + 1) for i in range(ids.numel())]
    with torch.no_grad():
        base = torch.log_softmax(adapter.last_logits(X).to(torch.float64), -1)
        out = []
        for a, b in units:
            Xu = X.clone()
            Xu[a:b] = mask_vec
            out.append(kl_divergence(base, torch.log_softmax(adapter.last_logits(Xu).to(torch.float64), -1)))
    return torch.stack(out).to(X.dtype)
