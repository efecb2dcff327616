"""Helpers for heta_fast's tests and for users checking their own fast paths (like ``torch.testing``)."""

from __future__ import annotations

import torch

from .models import TINY_ARCHS, tiny_model

__all__ = ["TINY_ARCHS", "tiny_model", "rel_err", "random_ids", "CharTokenizer"]


def rel_err(a, b, floor: float = 1e-12) -> float:
    """``max|a - b| / max|b|``: the error relative to the scale of the reference vector ``b``."""
    a = torch.as_tensor(a, dtype=torch.float64).detach()
    b = torch.as_tensor(b, dtype=torch.float64).detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def random_ids(n: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    """``n`` reproducible random token ids below ``vocab``."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


class CharTokenizer:
    """One token per character (ids 1..90, BOS 0), with character offsets: an offline stand-in tokenizer.

    It has the HuggingFace call signature heta_fast uses, so tests, ``--tiny-model`` runs and examples can
    use text without any tokenizer files.
    """

    bos_token_id = 0
    eos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {"<s>": 0}

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        ids = [1 + (ord(c) % 90) for c in text]
        offsets = [(i, i + 1) for i in range(len(text))]
        if add_special_tokens:
            ids, offsets = [0] + ids, [(0, 0)] + offsets
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def decode(self, ids):
        return "".join(chr(32 + (i % 90)) for i in ids)
