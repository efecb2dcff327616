"""KV-cache helpers: the clean prefix that suffix runs (masked KL rows, curvature chunks) start from."""

from __future__ import annotations

import copy
import inspect

from torch import nn


def cache_kwargs(module: nn.Module, cache) -> dict:
    """Keyword arguments passing a KV cache (or none) to a HF forward.

    transformers renamed ``past_key_values`` to ``cache``; use whichever the forward accepts.
    """
    if cache is None:
        return {"use_cache": False}
    params = inspect.signature(module.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def new_full_cache():
    """An empty KV cache that keeps every layer in full, so it can later be cut at any position.

    Built without the model config on purpose: a config-built cache evicts old positions on sliding-window
    layers; the model still applies its sliding-window masks from the positions.
    """
    from transformers import DynamicCache

    return DynamicCache()


def cut_cache(cache, length: int):
    """A copy of a KV cache holding only the first ``length`` positions (the clean prefix of a suffix run).

    transformers changed ``Cache.crop`` from ``crop(max_length)`` to ``crop(-tokens_to_remove)``; support both.
    """
    past = copy.deepcopy(cache)
    remove = past.get_seq_length() - length
    if remove < 0:
        raise ValueError(f"cache holds {past.get_seq_length()} positions, cannot cut it to {length}")
    if remove:
        if "tokens_to_remove" in inspect.signature(past.crop).parameters:
            past.crop(-remove)
        else:
            past.crop(length)
    return past
