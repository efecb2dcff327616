"""Units larger than a token (SPEC §6): sentences, paragraphs and the caller's character spans.

- :mod:`.segment` — sentence and paragraph boundaries in real text (character spans).
- :mod:`.partition` — context tokens grouped into units (:class:`UnitSpan`), by the rules of SPEC §6.
- :mod:`.ranges` — units as the components see them: ``(start, end)`` token ranges, chunked to share prefixes.

The engine scores units (:meth:`heta_fast.engine.Engine.explain` with ``units=``); :func:`unit_results`
turns its numbers into the result's :class:`heta_fast.result.Unit` entries.
"""

from __future__ import annotations

from ..options import HetaOptions
from .partition import UnitSpan, partition
from .segment import paragraph_spans, sentence_spans


def context_units(opts: HetaOptions, text: str | None, offsets: list[tuple[int, int]] | None, t: int) -> list[UnitSpan]:
    """The units of the context 0 … t−1 for ``opts.units`` / ``opts.spans``."""
    return partition(opts.units, text, offsets, t, opts.spans)


def unit_ranges(units: list[UnitSpan]) -> list[tuple[int, int]]:
    """The token ranges ``(start, end)`` of the units, as the engine takes them."""
    return [(u.start, u.end) for u in units]


def unit_results(units: list[UnitSpan], scores, tokens: list[str], text: str | None) -> list:
    """One :class:`heta_fast.result.Unit` per unit, with its numbers from the engine's ``UnitScores`` and its
    rank by score (1 = best)."""
    from ..result import Unit

    vals = [float(v) for v in scores.scores]
    order = sorted(range(len(vals)), key=lambda j: -vals[j])
    rank = {j: r + 1 for r, j in enumerate(order)}
    refined = set(scores.refined)

    def at(x, j):
        return None if x is None else float(x[j])

    out = []
    for j, u in enumerate(units):
        has_chars = u.char_start is not None and text is not None
        shown = text[u.char_start : u.char_end] if has_chars else "".join(tokens[u.start : u.end])
        out.append(Unit(text=shown, char_span=(u.char_start, u.char_end) if has_chars else None,
                        token_range=(u.start, u.end), kind=u.kind, score=vals[j], M=at(scores.M, j),
                        S=at(scores.S, j), I=at(scores.I, j), rank=rank[j], refined=j in refined))
    return out


__all__ = ["UnitSpan", "context_units", "paragraph_spans", "partition", "sentence_spans", "unit_ranges",
           "unit_results"]
