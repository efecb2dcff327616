"""Helpers for heta_fast's tests and for users checking their own fast paths (like ``torch.testing``)."""

from __future__ import annotations

import torch

from .models import TINY_ARCHS, tiny_model
from .tokenizers import CharTokenizer

__all__ = ["TINY_ARCHS", "tiny_model", "rel_err", "random_ids", "CharTokenizer"]


def rel_err(a, b, floor: float = 1e-12) -> float:
    """``max|a - b| / max|b|``: the error relative to the scale of the reference vector ``b``."""
    a = torch.as_tensor(a, dtype=torch.float64).detach()
    b = torch.as_tensor(b, dtype=torch.float64).detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def random_ids(n: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    """``n`` reproducible random token ids below ``vocab``."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
