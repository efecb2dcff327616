"""Coarse units over fine ones (SPEC §6, *Levels*): which fine units (sentences) each coarse unit holds, at one
or two coarse levels.

A coarse unit is a run of consecutive fine units, so the fine units always partition their parent, and a coarser
level's units are runs of the finer level's units:

* ``"paragraph"``: one coarse level, the fine units whose text starts in the same paragraph (a position without
  characters joins the unit that follows it, or the last one at the end).
* ``"block"``: blocks of about equal token counts, whole fine units each; a block closes early at a paragraph
  break near its share, so blocks follow the text's structure where that costs little. Scoring a unit costs its
  masked suffix, so with ``k = expand`` and n fine units, one coarse level of B blocks scores B + k·n/B units
  (least at B = √(k·n)), two coarse levels of B₁ blocks over B₂ sub-blocks score B₁ + k·B₂/B₁ + k·n/B₂ (least at
  B₁ = c, B₂ = c²/k with c = ∛(k²·n), 3c units). Two coarse levels are used where they score at most
  :data:`TWO_LEVELS_GAIN` of one level's units: n ≥ 131 at k = 3, e.g. 4,000 tokens of prose (187 sentences: 12
  blocks over 47 sub-blocks, 36 units instead of 47). (Sizes for children that cost half a level-1 unit, as the
  gate's recency suggests, were measured and saved nothing: benchmarks/eval/README.md, *Blocks at their designed
  count*.)
* ``"auto"``: blocks when the context has at least :data:`AUTO_MIN_PER_EXPANDED` · ``expand`` fine units (where
  levels mask at most about half as many suffixes as scoring every unit), else one level (every fine unit).

:func:`coarse_levels` returns the coarse levels, coarsest first, each as its groups of fine-unit indices, or None
for no levels.
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
# Blocks of blocks when their modelled units scored are at most this share of one coarse level's: a level more is
# one more ranking that can miss, so it has to save a fifth of the KL work to be worth it.
TWO_LEVELS_GAIN = 0.8

Groups = list[list[int]]  # coarse units, each as the indices of the fine units it holds


def coarse_levels(kind: str, fine: list[UnitSpan], text: str | None, expand: int) -> list[Groups] | None:
    """The coarse levels over ``fine``, coarsest first, each level's units as groups of fine-unit indices
    (consecutive, partitioning the fine units, nested in the level above); None for no levels (``kind="none"``,
    or ``"auto"`` on a context with few units)."""
    n = len(fine)
    if kind == "none" or n == 0 or (kind == "auto" and n < AUTO_MIN_PER_EXPANDED * expand):
        return None
    paragraph_of = _paragraph_labels(fine, text)
    if kind == "paragraph":
        return [[list(g) for _, g in itertools.groupby(range(n), key=paragraph_of.__getitem__)]]
    sizes = [u.end - u.start for u in fine]
    one = min(n, max(expand + 1, round(math.sqrt(expand * n))))
    c = (expand * expand * n) ** (1 / 3)
    outer, inner = max(expand + 1, round(c)), min(n, round(c * c / expand))
    if 3 * c > TWO_LEVELS_GAIN * 2 * math.sqrt(expand * n) or inner < 2 * outer:
        return [_blocks(sizes, paragraph_of, one)]
    return nested_blocks(sizes, paragraph_of, [outer, inner])


def nested_blocks(sizes: list[int], paragraph_of: list[int], counts: list[int]) -> list[Groups]:
    """Levels of blocks over the fine units, coarsest first, level i of about ``counts[i]`` blocks (counts coarsest
    first), each level's blocks whole blocks of the level below it, as groups of fine-unit indices."""
    levels = [_blocks(sizes, paragraph_of, counts[-1])]
    for count in reversed(counts[:-1]):
        below = levels[0]
        # Blocks of blocks: a block weighs its tokens and starts where its first fine unit starts.
        groups = _blocks([sum(sizes[j] for j in g) for g in below], [paragraph_of[g[0]] for g in below], count)
        levels.insert(0, [[j for s in g for j in below[s]] for g in groups])
    return levels


def _blocks(sizes: list[int], paragraph_of: list[int], n_blocks: int) -> Groups:
    """At most ``n_blocks`` runs of consecutive items (token counts ``sizes``) of about equal token counts.

    Block j ends near the j-th of ``n_blocks`` equal steps of the items' cumulative tokens, or earlier at a
    paragraph break within a quarter of a share of that point. The points are fixed, so a block closed early leaves
    its tokens to the next one instead of adding a block (level 1's work grows with its blocks), and the last block
    takes the rest."""
    share = sum(sizes) / n_blocks
    groups: Groups = [[]]
    done = 0  # tokens before item j
    for j, s in enumerate(sizes):
        starts_paragraph = j > 0 and paragraph_of[j] != paragraph_of[j - 1]
        end = len(groups) * share  # where the open block should end
        # Close before item j when it would sit mostly past that point (so blocks come out near their share), or at
        # a paragraph break close before it. (Breaks within half a share followed the text better but made 35
        # blocks of 192 sentences instead of 24.)
        if groups[-1] and len(groups) < n_blocks and (
                done + s / 2 > end or (starts_paragraph and done >= end - (1 - PARAGRAPH_CLOSE) * share)):
            groups.append([])
        groups[-1].append(j)
        done += s
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


def group_ranges(groups: Groups, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The token range of each coarse unit: from its first fine unit's start to its last one's end."""
    return [(ranges[g[0]][0], ranges[g[-1]][1]) for g in groups]


def with_units(coarse: list[Groups], n: int) -> list[Groups]:
    """The coarse levels followed by the n units themselves (one-unit groups): every level that gets scored."""
    return [*coarse, [[j] for j in range(n)]]


def parents(coarse: Groups, finer: Groups) -> list[int]:
    """For each unit of ``finer`` (groups of fine-unit indices nested in ``coarse``'s), its coarse unit."""
    owner = {j: c for c, g in enumerate(coarse) for j in g}
    return [owner[g[0]] for g in finer]
