"""Units as the components see them: ``(start, end)`` ranges of consecutive positions (SPEC §6).

The fast paths and references of S and I take a list of such ranges (ordered, disjoint; a partition of the
context at the unit level, or a subset of single tokens when a refinement scores the best units' tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import HetaInputError

Unit = tuple[int, int]  # positions start … end − 1


def token_units(t: int) -> list[Unit]:
    """Every position 0 … t−1 as a unit of its own (the token level)."""
    return [(i, i + 1) for i in range(t)]


def check_units(units: Sequence[Unit], t: int) -> list[Unit]:
    """Units as ``(start, end)`` int pairs, non-empty, in order, disjoint and inside 0 … t (else an error)."""
    out: list[Unit] = []
    last = 0
    for u in units:
        a, b = int(u[0]), int(u[1])
        if not (0 <= a < b <= t) or a < last:
            raise HetaInputError(f"units must be non-empty, ordered, disjoint ranges inside 0 … {t}; got {tuple(u)}")
        out.append((a, b))
        last = b
    return out


def unit_chunks(units: Sequence[Unit], span: int, count: int) -> list[list[int]]:
    """Indices of consecutive units grouped into chunks that share one clean prefix: at most ``count``
    units, ending within ``span`` positions of the chunk's first position (a longer unit gets a chunk of
    its own). For single-token units these are exactly chunks of ``min(span, count)`` tokens."""
    chunks: list[list[int]] = []
    for j, (_, b) in enumerate(units):
        if chunks and len(chunks[-1]) < count and b - units[chunks[-1][0]][0] <= span:
            chunks[-1].append(j)
        else:
            chunks.append([j])
    return chunks


def unit_sums(values, units: Sequence[Unit]):
    """Per-unit sums of a per-position tensor ``[t]`` (M_u = Σ_{i∈u} M_i): ``[len(units)]``."""
    import torch

    return torch.stack([values[a:b].sum() for a, b in units]) if units else values.new_zeros(0)
