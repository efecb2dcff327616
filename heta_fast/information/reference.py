"""The KL term I (SPEC §3) written as plainly as possible: the float64 oracle of :mod:`heta_fast.information.batched`.

One full forward per masked token, exactly as the formula reads; slow on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hf import ModelAdapter


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(π ‖ π') from log-probabilities (last dim), clamped at 0."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)


def information(adapter: ModelAdapter, ids: Tensor, mask_vec: Tensor) -> Tensor:
    """I_i = KL(π ‖ π^{(i)}), one full forward per masked token ``[t]`` (SPEC §3)."""
    X = adapter.embed(ids)
    with torch.no_grad():
        base = torch.log_softmax(adapter.last_logits(X).to(torch.float64), -1)
        out = []
        for i in range(ids.numel()):
            Xi = X.clone()
            Xi[i] = mask_vec
            out.append(kl_divergence(base, torch.log_softmax(adapter.last_logits(Xi).to(torch.float64), -1)))
    return torch.stack(out).to(X.dtype)
