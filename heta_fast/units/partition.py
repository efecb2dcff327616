"""Context tokens grouped into units (SPEC §6): sentences, paragraphs, or the caller's character spans.

Rules (SPEC §6): units partition the context; a unit made from a character span holds every token whose
character range overlaps the span, and a token overlapping two spans goes to the first; positions without
characters (BOS, a sink) are units of their own; a unit never splits a token. Text between the caller's
spans becomes units of its own.

A token's character range is taken without surrounding whitespace (as tokenizers' ``trim_offsets`` does):
byte-level BPE reports ``" The"`` as starting at the space, which would otherwise put the first word of a
span into the gap before it. Whitespace-only tokens keep their whole range.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..errors import HetaInputError
from .segment import paragraph_spans, sentence_spans


@dataclass(frozen=True)
class UnitSpan:
    """One unit of a context: token positions ``start … end − 1`` and the character span it was made from.

    ``kind``: ``"sentence"``, ``"paragraph"``, ``"span"`` (the caller's), ``"gap"`` (text between the caller's
    spans) or ``"special"`` (a position without characters; ``char_start``/``char_end`` are None).
    """

    start: int
    end: int
    char_start: int | None
    char_end: int | None
    kind: str


def tile(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Trimmed spans stretched to tile ``0 … length``: whitespace before a span joins it, the text's tail
    joins the last one. (Byte-level tokens carry the space before a word, so it belongs to what follows.)"""
    out = []
    for j, (_, end) in enumerate(spans):
        start = 0 if j == 0 else out[-1][1]
        out.append((start, length if j == len(spans) - 1 else end))
    return out


def with_gaps(spans: tuple[tuple[int, int], ...], length: int) -> list[tuple[tuple[int, int], str]]:
    """The caller's spans plus the text between them (and before/after), in order, tiling ``0 … length``."""
    out, pos = [], 0
    for a, b in spans:
        if b > length:
            raise HetaInputError(f"span ({a}, {b}) is outside the text, which has {length} characters", field="spans")
        if a > pos:
            out.append(((pos, a), "gap"))
        out.append(((a, b), "span"))
        pos = b
    if pos < length:
        out.append(((pos, length), "gap"))
    return out


def _token_range(text: str, s: int, e: int) -> tuple[int, int]:
    """A token's characters without surrounding whitespace (whitespace-only tokens keep their range)."""
    a, b = s, e
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if b > a else (s, e)


def partition(kind: str, text: str | None, offsets: list[tuple[int, int]] | None, t: int,
              spans: tuple[tuple[int, int], ...] | None = None) -> list[UnitSpan]:
    """The units of context positions ``0 … t−1``.

    Args:
        kind: ``"token"``, ``"sentence"``, ``"paragraph"`` or ``"spans"`` (with ``spans``).
        text, offsets: the input text and each token's ``(start, end)`` character offsets (None for ids input).
        t: context length (tokens from t on are not part of the context).
    """
    if kind == "token":
        return [UnitSpan(i, i + 1, *(offsets[i] if offsets else (None, None)), "token") for i in range(t)]
    if text is None or offsets is None:
        raise HetaInputError(f"units={kind!r} needs text input with character offsets; token ids carry no text "
                             "to split (give the text, or use units='token')", field="units")
    if kind == "sentence":
        ranges = [(r, "sentence") for r in tile(sentence_spans(text), len(text))]
    elif kind == "paragraph":
        ranges = [(r, "paragraph") for r in tile(paragraph_spans(text), len(text))]
    elif kind == "spans":
        if not spans:
            raise HetaInputError("units='spans' needs spans=[(start, end), ...]", field="spans")
        ranges = with_gaps(spans, len(text))
    else:
        raise HetaInputError(f"unknown units {kind!r}")
    ends = [r[1] for r, _ in ranges]
    labels: list[int | None] = []
    for i in range(t):
        s, e = offsets[i]
        if e <= s:
            labels.append(None)  # no characters: a unit of its own
            continue
        if e > len(text) and s >= len(text):
            labels.append(None)  # characters beyond the text (an appended continuation): its own unit
            continue
        a, b = _token_range(text, s, e)
        j = bisect.bisect_right(ends, a)  # the first range ending after the token's first character
        labels.append(j if j < len(ranges) and ranges[j][0][0] < b else None)
    # The context may end inside a unit (a target in the middle of a sentence): its span ends with the context.
    context_end = max((e for _, e in offsets[:t]), default=0)
    units: list[UnitSpan] = []
    i = 0
    while i < t:
        j = labels[i]
        k = i + 1
        if j is not None:
            while k < t and labels[k] == j:
                k += 1
            (cs, ce), kd = ranges[j]
            units.append(UnitSpan(i, k, cs, min(ce, max(context_end, cs + 1)), kd))
        else:
            units.append(UnitSpan(i, k, None, None, "special"))
        i = k
    return units
