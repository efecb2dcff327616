"""Coarse units over fine ones (SPEC §6, *Levels*): which fine units (sentences) each coarse unit holds, at one
or two coarse levels.

A coarse unit is a run of consecutive fine units, so the fine units always partition their parent, and a coarser
level's units are runs of the finer level's units:

* ``"paragraph"``: one coarse level, the fine units whose text starts in the same paragraph (a position without
  characters joins the unit that follows it, or the last one at the end).
* ``"block"``: blocks of about equal token counts, whole fine units each; a block closes early at a paragraph
  break near its share, so blocks follow the text's structure where that costs little. Scoring a unit costs its
  masked suffix: about half the context for a level-1 block, and :data:`CHILD_COST` (α) of that on average for
  the children of the ``k = expand`` best. With n fine units, one coarse level of B blocks costs B + α·k·n/B
  level-1 units (least at B = √(α·k·n)); two coarse levels of B₁ blocks over B₂ sub-blocks cost
  B₁ + α·k·(B₂/B₁ + n/B₂) (least at B₁ = ∛((α·k)²·n), B₂ = √(n·B₁), 3·B₁). Two coarse levels are used where they
  cost at most :data:`TWO_LEVELS_GAIN` of one level: n ≥ 131 at k = 3 and α = 1, e.g. 4,000 tokens of prose
  (187 sentences: 12 blocks over 47 sub-blocks, 36 units instead of 47).
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
# Blocks of blocks when their modelled cost is at most this share of one coarse level's: a level more is one more
# ranking that can miss, so it has to save a fifth of the KL work to be worth it.
TWO_LEVELS_GAIN = 0.8
# The masked rows of an expanded unit's children, per child, as a share of a level-1 unit's (half the context). 1:
# every unit costs the same. Measured on the needle runs (benchmarks/eval/README.md, *Levels*) it ranges from 0.04
# (8,030 tokens, the blocks next to the target expanded) to 0.87 (4,005 tokens, one expanded block mid-document); the
# sizes for 0.5 (9 blocks over 58 sub-blocks at 364 sentences instead of 15 over 74) saved nothing on those runs,
# because an early or mid-document block was among the expanded ones in 2 of 3 cases.
CHILD_COST = 1.0

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
    ak = CHILD_COST * expand
    one = min(n, max(expand + 1, round(math.sqrt(ak * n))))
    b1 = (ak * ak * n) ** (1 / 3)
    outer, inner = max(expand + 1, round(b1)), min(n, round(math.sqrt(n * b1)))
    if 3 * b1 > TWO_LEVELS_GAIN * 2 * math.sqrt(ak * n) or inner < 2 * outer:
        return [_blocks(sizes, paragraph_of, one)]
    sub = _blocks(sizes, paragraph_of, inner)
    # Blocks of sub-blocks: a sub-block weighs its tokens and starts where its first fine unit starts.
    top = _blocks([sum(sizes[j] for j in g) for g in sub], [paragraph_of[g[0]] for g in sub], outer)
    return [[[j for s in g for j in sub[s]] for g in top], sub]


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
