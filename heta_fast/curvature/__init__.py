"""The sensitivity S (SPEC §2): Hutchinson-probed diagonal blocks of the target log-probability's curvature.

- :mod:`.batched` — :func:`sensitivity_batched`: one first-order graph per chunk of tokens, batched second
  backwards over causal suffixes (exact), or a randomized range finder (low rank).
- :mod:`.head` — the LM head's gradient, Hessian and Fisher matrix in closed form, once per target.
- :mod:`.reference` — :func:`sensitivity_reference`: one double backward per probe in float64 (the oracle).

The attention core with a hand-written double backward that the batched path runs through lives with the
model glue (:mod:`heta_fast.hf.attention_core`), since the recording attention calls it.
"""

from .batched import LowRankCurvature, lowrank_curvature, sensitivity_batched
from .reference import sensitivity as sensitivity_reference

__all__ = ["LowRankCurvature", "lowrank_curvature", "sensitivity_batched", "sensitivity_reference"]
