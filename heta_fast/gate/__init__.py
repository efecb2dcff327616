"""The causal gate M (SPEC §1): attention–value flow from each context token into the prediction position.

- :mod:`.fast` — :func:`gate_fast` / :func:`gate_fast_many`: one recorded forward, tiled rollouts
  (:func:`gate_recording` / :func:`gate_from_recording` when the forward is one the caller runs anyway).
- :mod:`.reference` — :func:`gate_reference`: float64, materialised attention maps (the oracle).
- :mod:`.rollout` — the flow and chain rollouts over layers (and their materialising references).
- :mod:`.attn_vecmat` — their one primitive (torch tiles, Triton kernels in ``heta_fast.kernels``, reference).
- :mod:`.value_norms` — value norms ν and the normalisation of M, shared by both paths.
"""

from .fast import gate_fast, gate_fast_many, gate_from_recording, gate_recording
from .reference import gate as gate_reference

__all__ = ["gate_fast", "gate_fast_many", "gate_from_recording", "gate_recording", "gate_reference"]
