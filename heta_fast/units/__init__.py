"""Units larger than a token (SPEC §6): sentences, paragraphs and the caller's character spans.

- :mod:`.segment` — sentence and paragraph boundaries in real text (character spans).
- :mod:`.partition` — context tokens grouped into units (:class:`UnitSpan`), by the rules of SPEC §6.
- :mod:`.ranges` — units as the components see them: ``(start, end)`` token ranges, chunked to share prefixes.
- :mod:`.levels` — coarse units (paragraphs, blocks, blocks of blocks) over the fine ones, for scoring coarse to fine.

The engine scores units (:meth:`heta_fast.engine.Engine.explain` with ``units=``); :func:`unit_results`
turns its numbers into the result's :class:`heta_fast.result.Unit` entries.
"""

from __future__ import annotations

from ..options import HetaOptions
from .levels import Groups, coarse_levels, group_ranges
from .partition import UnitSpan, partition
from .segment import paragraph_spans, sentence_spans


def context_units(opts: HetaOptions, text: str | None, offsets: list[tuple[int, int]] | None, t: int) -> list[UnitSpan]:
    """The units of the context 0 … t−1 for ``opts.units`` / ``opts.spans``."""
    return partition(opts.units, text, offsets, t, opts.spans)


def unit_ranges(units: list[UnitSpan]) -> list[tuple[int, int]]:
    """The token ranges ``(start, end)`` of the units, as the engine takes them."""
    return [(u.start, u.end) for u in units]


def unit_results(units: list[UnitSpan], scores, tokens: list[str], text: str | None,
                 coarse: list[Groups] | None = None, coarse_kind: str = "block") -> tuple[list, list | None]:
    """The result's :class:`heta_fast.result.Unit` entries from the engine's ``UnitScores``: one per unit, and with
    levels (``coarse``: the coarse levels, coarsest first, as groups of unit indices) one per coarse unit of every
    level, coarsest level first (else None). A unit's ``parent`` indexes that coarse list.

    Ranks (1 = best) within each level: the scored units by score, then the units whose parent was not expanded,
    which are reported unscored with their parent's score (SPEC §6), ordered by that score and then by their own
    gate M_u.
    """
    from ..result import Unit

    def at(x, j):
        return None if x is None or x[j] != x[j] else float(x[j])

    def shown(u: UnitSpan) -> tuple[str, tuple[int, int] | None]:
        if u.char_start is not None and text is not None:
            return text[u.char_start : u.char_end], (u.char_start, u.char_end)
        return "".join(tokens[u.start : u.end]), None

    tiers = [scores]  # each level's numbers, coarsest first
    while tiers[0].coarse is not None:
        tiers.insert(0, tiers[0].coarse)
    spans = [[UnitSpan(a, b, next((units[j].char_start for j in g if units[j].char_start is not None), None),
                       next((units[j].char_end for j in reversed(g) if units[j].char_end is not None), None),
                       coarse_kind) for g, (a, b) in zip(groups, group_ranges(groups, unit_ranges(units)), strict=True)]
             for groups in (coarse or [])[: len(tiers) - 1]] + [units]
    levels: list[list] = []
    offset = above_offset = 0  # where this level's and the level above's units start in the coarse list
    above_vals: list[float] = []
    for depth, (x, tier_spans) in enumerate(zip(tiers, spans, strict=True)):
        scored = x.scored
        vals = [float(v) if ok else above_vals[x.parent[j]] for j, (v, ok) in enumerate(zip(x.scores.tolist(), scored,
                                                                                         strict=True))]
        m_vals = [0.0 if x.M is None else float(x.M[j]) for j in range(len(tier_spans))]
        rank = _ranks(vals, key=lambda j: (not scored[j], -vals[j], -m_vals[j]))
        finest = depth == len(tiers) - 1
        # A coarse unit's ``refined``: it was expanded (units of the level below scored inside it).
        refined = set(x.refined) if finest else {p for p, ok in zip(tiers[depth + 1].parent, tiers[depth + 1].scored,
                                                                       strict=True) if ok}
        levels.append([Unit(*shown(u), token_range=(u.start, u.end), kind=u.kind, score=vals[j], M=at(x.M, j),
                            S=at(x.S, j), I=at(x.I, j), rank=rank[j], refined=j in refined, scored=scored[j],
                            parent=None if x.parent is None else above_offset + x.parent[j], level=depth + 1)
                       for j, u in enumerate(tier_spans)])
        above_vals, above_offset, offset = vals, offset, offset + len(tier_spans)
    return levels[-1], [u for level in levels[:-1] for u in level] or None


def _ranks(vals: list[float], key=None) -> dict[int, int]:
    order = sorted(range(len(vals)), key=key or (lambda j: -vals[j]))
    return {j: r + 1 for r, j in enumerate(order)}


__all__ = ["UnitSpan", "coarse_levels", "context_units", "paragraph_spans", "partition", "sentence_spans", "unit_ranges",
           "unit_results"]
