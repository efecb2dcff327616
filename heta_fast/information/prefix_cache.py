"""A read-only KV cache of a clean prefix, shared by a batch of suffix runs without copying it.

The KL pass runs many masked suffixes a … p in one batch, all behind the same clean prefix 0 … a−1. Cutting
the clean cache and repeating it per batch row (``batch_repeat_interleave``) copies the prefix's keys and
values once per row and per layer, and keeps every layer's copy alive for the whole forward. Here each layer
hands attention the prefix expanded as a view and concatenated with the suffix's keys, and stores nothing:
the suffix run never reads the cache again, so only the layer being computed holds its concatenation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shared_prefix_cache(cache, length: int, batch: int):
    """A cache holding positions 0 … length−1 of ``cache`` (a full DynamicCache), seen by ``batch`` rows.

    Nothing is copied: each layer keeps views of the clean keys/values. The cache is for one forward only.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """One layer's clean prefix (views, batch 1); ``update`` returns prefix + new states, stores nothing."""

        def __init__(self, keys: Tensor, values: Tensor):
            super().__init__()
            self.keys, self.values = keys, values
            self.device = keys.device
            self.is_initialized = True

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
            n = key_states.shape[0]
            keys = torch.cat([self.keys.expand(n, -1, -1, -1), key_states], dim=-2)
            values = torch.cat([self.values.expand(n, -1, -1, -1), value_states], dim=-2)
            return keys, values

    shared = DynamicCache()
    shared.layers = [PrefixLayer(layer.keys[:, :, :length], layer.values[:, :, :length]) for layer in cache.layers]
    return shared
