"""Random draws shared by every path: Rademacher probes for S and the low-rank test matrix (SPEC §2).

Probes are drawn for the whole context in (i, k) order from a CPU generator, so a token's probes depend
only on the seed and its position, never on windows, units or the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import HetaInputError


def draw_probes(t: int, m: int, d: int, seed: int, dtype=torch.float64) -> Tensor:
    """Rademacher probes ``R [t, m, d]`` drawn in (i, k) order from a CPU generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (t, m, d), generator=gen) * 2 - 1).to(dtype)


def draw_range_finder(t: int, d: int, rank: int, seed: int, dtype=torch.float64) -> Tensor:
    """Gaussian test matrix Ω ``[t*d, rank]`` for hessian='lowrank' (a generator of its own, seed + 1)."""
    gen = torch.Generator().manual_seed(int(seed) + 1)
    return torch.randn(t * d, rank, generator=gen).to(dtype)


def check_probes(probes: Tensor, t: int, d: int) -> None:
    """Probes must be ``[t, m, d]`` for a context of t tokens of width d."""
    if probes.ndim != 3 or probes.shape[0] != t or probes.shape[2] != d or probes.shape[1] < 1:
        raise HetaInputError(f"probes must have shape [t={t}, m, d={d}], got {tuple(probes.shape)}")
