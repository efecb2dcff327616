"""Units larger than a token (SPEC §6): sentences, paragraphs and the caller's character spans.

- :mod:`.segment` — sentence and paragraph boundaries in real text (character spans).
- :mod:`.partition` — context tokens grouped into units (:class:`UnitSpan`), by the rules of SPEC §6.
- :mod:`.ranges` — units as the components see them: ``(start, end)`` token ranges, chunked to share prefixes.
- :mod:`.levels` — coarse units (paragraphs, blocks) over the fine ones, for scoring coarse to fine.

The engine scores units (:meth:`heta_fast.engine.Engine.explain` with ``units=``); :func:`unit_results`
turns its numbers into the result's :class:`heta_fast.result.Unit` entries.
"""

from __future__ import annotations

from ..options import HetaOptions
from .levels import coarse_groups, group_ranges
from .partition import UnitSpan, partition
from .segment import paragraph_spans, sentence_spans


def context_units(opts: HetaOptions, text: str | None, offsets: list[tuple[int, int]] | None, t: int) -> list[UnitSpan]:
    """The units of the context 0 … t−1 for ``opts.units`` / ``opts.spans``."""
    return partition(opts.units, text, offsets, t, opts.spans)


def unit_ranges(units: list[UnitSpan]) -> list[tuple[int, int]]:
    """The token ranges ``(start, end)`` of the units, as the engine takes them."""
    return [(u.start, u.end) for u in units]


def unit_results(units: list[UnitSpan], scores, tokens: list[str], text: str | None,
                 groups: list[list[int]] | None = None, coarse_kind: str = "block") -> tuple[list, list | None]:
    """The result's :class:`heta_fast.result.Unit` entries from the engine's ``UnitScores``: one per unit, and with
    levels (``groups``) one per coarse unit (else None).

    Ranks (1 = best): the scored units by score, then the units of coarse units that were not expanded, which are
    reported unscored with their parent's score (SPEC §6), ordered by that score and then by their own gate M_u.
    """
    from ..result import Unit

    def at(x, j):
        return None if x is None or x[j] != x[j] else float(x[j])

    def shown(u: UnitSpan) -> tuple[str, tuple[int, int] | None]:
        if u.char_start is not None and text is not None:
            return text[u.char_start : u.char_end], (u.char_start, u.char_end)
        return "".join(tokens[u.start : u.end]), None

    coarse_out = None
    parent_score = None
    if scores.coarse is not None:
        c = scores.coarse
        spans = [UnitSpan(a, b, next((units[j].char_start for j in g if units[j].char_start is not None), None),
                          next((units[j].char_end for j in reversed(g) if units[j].char_end is not None), None),
                          coarse_kind) for g, (a, b) in zip(groups, group_ranges(groups, unit_ranges(units)),
                                                            strict=True)]
        c_rank = _ranks([float(v) for v in c.scores])
        expanded = {scores.parent[j] for j, ok in enumerate(scores.scored) if ok}
        coarse_out = [Unit(*shown(u), token_range=(u.start, u.end), kind=u.kind, score=float(c.scores[j]),
                           M=at(c.M, j), S=at(c.S, j), I=at(c.I, j), rank=c_rank[j], refined=j in expanded, level=1)
                      for j, u in enumerate(spans)]
        parent_score = [float(c.scores[scores.parent[j]]) for j in range(len(units))]
    scored = scores.scored
    vals = [float(v) if ok else parent_score[j] for j, (v, ok) in enumerate(zip(scores.scores.tolist(), scored, strict=True))]
    m_vals = [0.0 if scores.M is None else float(scores.M[j]) for j in range(len(units))]
    rank = _ranks(vals, key=lambda j: (not scored[j], -vals[j], -m_vals[j]))
    refined = set(scores.refined)
    out = []
    for j, u in enumerate(units):
        txt, span = shown(u)
        out.append(Unit(text=txt, char_span=span, token_range=(u.start, u.end), kind=u.kind, score=vals[j],
                        M=at(scores.M, j), S=at(scores.S, j), I=at(scores.I, j), rank=rank[j], refined=j in refined,
                        scored=scored[j], parent=None if scores.parent is None else scores.parent[j],
                        level=1 if scores.coarse is None else 2))
    return out, coarse_out


def _ranks(vals: list[float], key=None) -> dict[int, int]:
    order = sorted(range(len(vals)), key=key or (lambda j: -vals[j]))
    return {j: r + 1 for r, j in enumerate(order)}


__all__ = ["UnitSpan", "coarse_groups", "context_units", "paragraph_spans", "partition", "sentence_spans", "unit_ranges",
           "unit_results"]
