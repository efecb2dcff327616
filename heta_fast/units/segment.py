"""Sentence and paragraph boundaries in real text, as character spans (SPEC §6 ``units="sentence"|"paragraph"``).

A small rule-based splitter, with no dependency (the well-known pure-Python segmenter on the package index,
pySBD, has had no release since 2021). The rules, each tested in tests/units/test_segment.py:

* Paragraphs end at blank lines. A fenced code block (``` … ```) is one paragraph and one sentence, blank
  lines included; its dots and newlines never split it.
* A sentence ends after ``.``, ``!``, ``?`` or ``…`` (repeated, e.g. ``?!`` or ``...``), then any closing quotes
  or brackets, then whitespace, when what follows does not start with a lowercase letter (``"Stop!" he
  said.`` stays one sentence) and the word before a ``.`` is not an abbreviation (``Dr.``, ``e.g.``,
  ``etc.``, ``Fig.``, initials such as ``J.`` or ``U.S.``).
* Decimals, versions, URLs and code (``3.14``, ``v2.0.1``, ``a.b()``) never split: no whitespace follows the dot.
* A line break ends a sentence when the line ends with sentence punctuation or a colon, or when the next
  line starts a list item (``-``, ``*``, ``•``, ``1.``, ``2)``) or a heading (``#``); a line that is a heading or a
  list item is a sentence of its own. Other single line breaks (hard-wrapped prose) do not split.
* Text after the last punctuation (a missing final full stop) is the last sentence.

Spans are returned trimmed (no surrounding whitespace); :func:`heta_fast.units.partition.tile` gives the
whitespace between them to the unit that follows, so the units tile the text.
"""

from __future__ import annotations

import re

# Abbreviations that take a full stop without ending a sentence (compared lower-case, without the dot).
ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "ed", "eds", "rev", "gen", "col", "lt", "sgt", "capt", "cmdr", "gov", "sen", "rep", "pres", "inc", "ltd", "co", "corp", "dept", "univ", "assn", "bros", "vs", "etc", "al", "cf", "ca", "approx", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun", "e.g", "i.e", "viz", "a.m", "p.m", "u.s", "u.k", "u.n", "ph.d", "b.a", "m.a", "b.sc", "m.sc", "op", "cit", "ibid"]
)
# Abbreviations that are also ordinary words ("No.", "Art.", "Max."): only before a number ("No. 5", "p. 12").
NUMBER_ABBREVIATIONS = frozenset(["no", "nos", "fig", "figs", "eq", "eqs", "vol", "vols", "ch", "sec", "pp", "p", "para", "art", "ex", "min", "max"])

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[^\n]*$", re.M | re.S)
_BLANK = re.compile(r"\n[ \t]*\n\s*")
_END = re.compile(r"[.!?…。！？]+[\"'”’»)\]}]*")
_LIST_OR_HEADING = re.compile(r"[ \t]*(?:[-*•+]\s|\d{1,3}[.)]\s|#{1,6}\s)")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` without surrounding whitespace, or None if only whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _blocks(text: str) -> list[tuple[int, int, bool]]:
    """Paragraph blocks ``(start, end, is_code)``: fenced code blocks whole, other text split at blank lines."""
    out: list[tuple[int, int, bool]] = []

    def prose(a: int, b: int) -> None:
        pos = a
        for m in _BLANK.finditer(text, a, b):
            span = _trimmed(text, pos, m.start())
            if span:
                out.append((*span, False))
            pos = m.end()
        span = _trimmed(text, pos, b)
        if span:
            out.append((*span, False))

    pos = 0
    for m in _FENCE.finditer(text):
        prose(pos, m.start())
        out.append((m.start(), m.end(), True))
        pos = m.end()
    prose(pos, len(text))
    return out


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Trimmed character spans of the paragraphs of ``text`` (blocks between blank lines; code fences whole)."""
    return [(a, b) for a, b, _ in _blocks(text)]


def _is_abbreviation(text: str, dot: int, start: int, next_char: str) -> bool:
    """Whether the ``.`` at index ``dot`` closes an abbreviation or an initial (the word before it);
    ``next_char`` is the first character after the whitespace that follows."""
    i = dot
    while i > start and not text[i - 1].isspace() and text[i - 1] not in "([{\"'“‘":
        i -= 1
    word = text[i:dot]
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith", "A. and B."
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
        return True  # dotted initials: U.S, e.g, i.e, a.m
    return word.lower() in ABBREVIATIONS or (word.lower() in NUMBER_ABBREVIATIONS and next_char.isdigit())


def _sentence_ends(text: str, a: int, b: int) -> list[int]:
    """End offsets (exclusive) of the sentences inside the prose block ``text[a:b]``."""
    ends: list[int] = []
    for m in _END.finditer(text, a, b):
        end = m.end()
        nxt = end
        while nxt < b and text[nxt] in " \t\r\n":
            nxt += 1
        if nxt == end or nxt >= b:
            continue  # no whitespace after it (3.14, a.b()) or the end of the block
        if text[nxt].islower():
            continue  # '"Stop!" he said', 'e.g. this'
        if text[m.start() : m.end()] == "." and _is_abbreviation(text, m.start(), a, text[nxt]):
            continue
        ends.append(end)
    # Line breaks: after a colon, before a list item or heading, and around heading/list lines.
    pos = a
    while True:
        nl = text.find("\n", pos, b)
        if nl < 0:
            break
        line_start = text.rfind("\n", a, nl) + 1 if text.rfind("\n", a, nl) >= 0 else a
        line = text[line_start:nl].rstrip()
        nxt = nl + 1
        following = text[nxt:b].lstrip()[:1]
        # A list item or heading line ends its sentence unless the next line continues it in lower case.
        item_ends = _LIST_OR_HEADING.match(line) and not following.islower()
        if line and (line.endswith(":") or _LIST_OR_HEADING.match(text, nxt) or item_ends):
            ends.append(line_start + len(line))
        pos = nxt
    return sorted(set(ends))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Trimmed character spans of the sentences of ``text``, in order (see the module docstring for the rules)."""
    spans: list[tuple[int, int]] = []
    for a, b, code in _blocks(text):
        if code:
            spans.append((a, b))
            continue
        pos = a
        for end in _sentence_ends(text, a, b) + [b]:
            span = _trimmed(text, pos, end)
            if span:
                spans.append(span)
            pos = max(pos, end)
    return spans
