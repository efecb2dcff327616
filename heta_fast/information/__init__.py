"""The information term I (SPEC §3): the KL shift of the next-token distribution when a token is masked.

- :mod:`.batched` — :func:`information_batched` / :func:`information_multi`: every single-token mask in
  one pass over causal suffixes sharing the clean prefix cache.
- :mod:`.kl_op` — the op ``heta_fast::kl_from_hidden`` (LM head + softmax + KL fused, vocabulary streamed):
  schema, dispatch to the C++/CUDA kernels in ``csrc/``; :mod:`.kl_op_reference` — its torch references.
- :mod:`.reference` — :func:`information_reference`: one full forward per mask in float64 (the oracle).
- :mod:`.mask` — the replacement row of a masked token, shared by both paths.
"""

from .batched import information_batched, information_multi
from .mask import mask_vector
from .reference import information as information_reference

__all__ = ["information_batched", "information_multi", "information_reference", "mask_vector"]
