"""Coarse units over fine ones (SPEC §6, *Levels*): which fine units (sentences) each coarse unit holds.

A coarse unit is a run of consecutive fine units, so the fine units always partition their parent:

* ``"paragraph"``: the fine units whose text starts in the same paragraph (a position without characters joins
  the unit that follows it, or the last one at the end).
* ``"block"``: about √(expand · n) blocks of about equal token counts, whole fine units each; a block closes
  early at a paragraph break once it holds three quarters of its share, so blocks follow the text's structure
  where that costs little. √(expand · n) balances the two levels' masked suffixes: n_c coarse units plus ``expand`` · n / n_c fine
  ones.
* ``"auto"``: blocks when the context has at least :data:`AUTO_MIN_PER_EXPANDED` · ``expand`` fine units (where
  two levels mask at most about half as many suffixes as one), else one level (every fine unit scored).

:func:`coarse_groups` returns the groups as lists of fine-unit indices, or None for one level.
"""

from __future__ import annotations

import bisect
import itertools
import math

from .partition import UnitSpan, tile
from .segment import paragraph_spans

# coarse="auto" uses levels from this many fine units per expanded coarse unit on (16 · expand: 2√(k·n) ≤ n/2).
AUTO_MIN_PER_EXPANDED = 16
# A block closes early at a paragraph break once it holds this share of its tokens.
PARAGRAPH_CLOSE = 0.75


def coarse_groups(kind: str, fine: list[UnitSpan], text: str | None, expand: int) -> list[list[int]] | None:
    """Consecutive groups of fine-unit indices forming the coarse units of ``kind``, or None for one level
    (``kind="none"``, or ``"auto"`` on a context with few units)."""
    n = len(fine)
    if kind == "none" or n == 0 or (kind == "auto" and n < AUTO_MIN_PER_EXPANDED * expand):
        return None
    paragraph_of = _paragraph_labels(fine, text)
    if kind == "paragraph":
        return [list(g) for _, g in itertools.groupby(range(n), key=paragraph_of.__getitem__)]
    return _blocks(fine, paragraph_of, expand)


def _blocks(fine: list[UnitSpan], paragraph_of: list[int], expand: int) -> list[list[int]]:
    n = len(fine)
    n_blocks = min(n, max(expand + 1, round(math.sqrt(expand * n))))
    total = sum(u.end - u.start for u in fine)
    share = total / n_blocks
    groups: list[list[int]] = [[]]
    size = 0
    for j, u in enumerate(fine):
        starts_paragraph = j > 0 and paragraph_of[j] != paragraph_of[j - 1]
        # Close before u when u would sit mostly past the share (so blocks come out near their share, not over
        # it), or at a paragraph break once the block holds most of its share. (Closing at half a share followed
        # the text better but made 35 blocks of 192 sentences instead of 24, and level 1's work grows with them.)
        if groups[-1] and (size + (u.end - u.start) / 2 > share or (starts_paragraph and size >= PARAGRAPH_CLOSE * share)):
            groups.append([])
            size = 0
        groups[-1].append(j)
        size += u.end - u.start
    return groups


def _paragraph_labels(fine: list[UnitSpan], text: str | None) -> list[int]:
    """The paragraph each fine unit starts in (all 0 without text); positions without characters take the label
    of the next unit with characters (the last label at the end)."""
    if text is None:
        return [0] * len(fine)
    starts = [a for a, _ in tile(paragraph_spans(text), len(text))] or [0]
    labels: list[int | None] = [None if u.char_start is None else bisect.bisect_right(starts, u.char_start) - 1
                                for u in fine]
    nxt = max((x for x in labels if x is not None), default=0)  # labels grow along the text: the last one
    for j in range(len(labels) - 1, -1, -1):
        if labels[j] is None:
            labels[j] = nxt
        else:
            nxt = labels[j]
    return labels  # type: ignore[return-value]


def group_ranges(groups: list[list[int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The token range of each coarse unit: from its first fine unit's start to its last one's end."""
    return [(ranges[g[0]][0], ranges[g[-1]][1]) for g in groups]
