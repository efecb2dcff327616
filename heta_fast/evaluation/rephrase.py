"""Stability across rephrasings: compare two attributions of differently worded prompts word by word.

A paraphrase changes the tokens, so scores cannot be compared position by position. Both prompts are
split into whitespace words (outer punctuation trimmed, lower-cased); each word gets the sum of the
scores of the tokens that overlap it; and the k-th occurrence of a word in one prompt is paired with the
k-th occurrence of the same word in the other. Spearman's ρ is taken over the paired words. Words only
one version has are left out (their number is reported), so ρ says whether the words both versions
share keep their order of importance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..errors import HetaInputError
from . import metrics as mt

_WORD = re.compile(r"\S+")
_STRIP = "\"'.,;:!?()[]{}"


def words(text: str) -> list[tuple[str, int, int]]:
    """``(normalised word, start, end)`` for each whitespace word of ``text``, outer punctuation trimmed."""
    out = []
    for m in _WORD.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s] in _STRIP:
            s += 1
        while e > s and text[e - 1] in _STRIP:
            e -= 1
        if e > s:
            out.append((text[s:e].lower(), s, e))
    return out


def word_scores(text: str, offsets: Sequence[tuple[int, int]], scores) -> tuple[list[str], list[float]]:
    """Each word of ``text`` and the summed scores of the tokens overlapping it (a token spanning two words
    counts for both). Tokens with no characters (a BOS) belong to no word."""
    a = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if a.numel() != len(offsets):
        raise HetaInputError(f"{a.numel()} scores for {len(offsets)} token offsets")
    names, vals = [], []
    for w, s, e in words(text):
        mask = mt.token_span_mask(offsets, text, [(s, e)])
        names.append(w)
        vals.append(float(a[mask].sum()))
    return names, vals


def align(words_a: Sequence[str], words_b: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: the k-th occurrence of a word in ``words_a`` with its k-th occurrence in ``words_b``."""
    where_b: dict[str, list[int]] = {}
    for j, w in enumerate(words_b):
        where_b.setdefault(w, []).append(j)
    seen: dict[str, int] = {}
    pairs = []
    for i, w in enumerate(words_a):
        k = seen.get(w, 0)
        seen[w] = k + 1
        if k < len(where_b.get(w, ())):
            pairs.append((i, where_b[w][k]))
    return pairs


def rephrase_spearman(text_a: str, offsets_a, scores_a, text_b: str, offsets_b, scores_b) -> dict:
    """Spearman ρ of two prompts' attributions over their shared words (:func:`align`).

    Returns ``rho`` (NaN with fewer than 3 shared words or a constant side), ``shared`` (paired words) and
    ``words_a`` / ``words_b`` (all words of each prompt).
    """
    wa, va = word_scores(text_a, offsets_a, scores_a)
    wb, vb = word_scores(text_b, offsets_b, scores_b)
    pairs = align(wa, wb)
    rho = float("nan")
    if len(pairs) >= 3:
        rho = mt.spearman([va[i] for i, _ in pairs], [vb[j] for _, j in pairs])
    return {"rho": rho, "shared": len(pairs), "words_a": len(wa), "words_b": len(wb)}
