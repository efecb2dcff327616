"""The replacement row for a masked token (SPEC §3 ``mask=``), shared by the fast and reference paths."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HetaInputError
from ..hf import ModelAdapter


def mask_vector(adapter: ModelAdapter, all_ids: Tensor, mask: str, mask_token_id: int | None) -> Tensor:
    """The replacement row for a masked token: zero, mean of all n rows of X, or a token's embedding."""
    X_all = adapter.embed(all_ids)
    if mask == "zero":
        return torch.zeros_like(X_all[0])
    if mask == "mean":
        return X_all.mean(0)
    if mask == "token":
        if mask_token_id is None or not 0 <= mask_token_id < adapter.vocab_size:
            raise HetaInputError(f"mask_token_id={mask_token_id} is not a valid token id")
        return adapter.embed(torch.tensor([mask_token_id], device=all_ids.device))[0]
    raise HetaInputError(f"unknown mask {mask!r}")
