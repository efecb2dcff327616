"""Curated attribution examples: loading, validation, and segments as character spans.

Accepted inputs:

- the released JSON (``{"examples": [...]}``, or a bare list) with ``input_text``, ``answer``,
  ``narrative_segment`` (distractor), ``sciq_support_segment`` (support) and
  ``important_word_indices_in_sciq_support`` / ``important_words``;
- JSONL, one example per line, with ``text`` (or ``input_text``), ``answer`` and labelled segments, either
  as substrings (``support`` / ``distractor``, or the released names) or as character spans
  (``support_span`` / ``distractor_span``: ``[start, end)``). A segment in several pieces (a support sentence
  in the middle of the passage, distractor sentences on both sides) is a list: ``distractor_spans`` /
  ``support_spans`` (``[[start, end], ...]``), or a list of substrings under ``support`` / ``distractor``; gold words optionally as ``important_spans``
  (character spans), ``important_word_indices`` (whitespace-split words of the support segment) or
  ``important_words`` (matched as whole words inside the support segment only); optionally a ``cue``
  appended to the text before the answer (default ``"\nAnswer:"``), e.g. ``"\nAnswer: Marta's favourite
  colour is"`` so that the model completes it with the evidence's words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HetaInputError

_WORD = re.compile(r"\S+")
# Punctuation glued to a word ("plant,") is not part of the gold word.
_STRIP = "\"'.,;:!?()[]{}"


@dataclass
class Example:
    """One curated example; every span is ``[start, end)`` in ``text``.

    ``support`` and ``distractor`` are each one or more spans (a segment may come in pieces), sorted.
    """

    id: str
    text: str
    answer: str
    support: list[tuple[int, int]]
    distractor: list[tuple[int, int]]
    gold: list[tuple[int, int]] = field(default_factory=list)
    cue: str = "\nAnswer:"  # appended to the text; the answer follows it

    def prompt(self) -> str:
        """The question followed by the answer cue; the gold answer's first token is the target."""
        return self.text + self.cue

    @property
    def labelled(self) -> bool:
        """Whether the example has support and distractor segments (an unlabelled one, such as a sequence-level
        prompt, is scored by the faithfulness metrics alone)."""
        return bool(self.support or self.distractor)

    @property
    def passage_end(self) -> int:
        """Where the last labelled segment ends: the question and cue are what follows."""
        if not self.labelled:
            raise ValueError(f"example {self.id} is unlabelled: it has no passage")
        return max(e for _, e in self.support + self.distractor)


def _find_unique(text: str, segment: str, what: str) -> tuple[int, int]:
    start = text.find(segment)
    if start < 0:
        raise HetaInputError(f"the {what} segment is not a substring of the text")
    if text.find(segment, start + 1) >= 0:
        raise HetaInputError(f"the {what} segment occurs more than once in the text; give {what}_span instead")
    return start, start + len(segment)


def _word_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Whitespace-separated words of ``text[start:end]`` as spans, outer punctuation trimmed."""
    spans = []
    for m in _WORD.finditer(text, start, end):
        s, e = m.start(), m.end()
        while s < e and text[s] in _STRIP:
            s += 1
        while e > s and text[e - 1] in _STRIP:
            e -= 1
        spans.append((s, e) if e > s else (m.start(), m.end()))
    return spans


def _span(value, text: str, what: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise HetaInputError(f"{what}_span must be [start, end] integers, got {value!r}")
    s, e = value
    if not 0 <= s < e <= len(text):
        raise HetaInputError(f"{what}_span {value!r} is outside the text (length {len(text)})")
    return s, e


def _segment(obj: dict, text: str, what: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """One labelled segment as sorted, non-overlapping spans, from whichever of its spellings ``obj`` uses."""
    given = [k for k in (f"{what}_span", f"{what}_spans") if k in obj]
    if len(given) > 1:
        raise HetaInputError(f"give either {what}_span or {what}_spans, not both")
    if given == [f"{what}_span"]:
        spans = [_span(obj[f"{what}_span"], text, what)]
    elif given:
        value = obj[f"{what}_spans"]
        if not isinstance(value, list) or not value:
            raise HetaInputError(f"{what}_spans must be a non-empty list of [start, end] spans, got {value!r}")
        spans = [_span(v, text, what) for v in value]
    else:
        seg = next((obj[n] for n in names if isinstance(obj.get(n), (str, list))), None)
        if seg is None:
            raise HetaInputError(f"missing the {what} segment: give '{what}' (a substring or a list of them), "
                                 f"'{what}_span' or '{what}_spans' (or \"unlabelled\": true for an example "
                                 "scored by faithfulness alone)")
        pieces = [seg] if isinstance(seg, str) else seg
        if not pieces or not all(isinstance(x, str) and x for x in pieces):
            raise HetaInputError(f"the {what} segment must be a non-empty substring or a list of them")
        spans = [_find_unique(text, x, what) for x in pieces]
    spans.sort()
    for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise HetaInputError(f"the pieces of the {what} segment overlap")
    return spans


def parse_example(obj: dict, index: int) -> Example:
    """Validate one raw example (``index`` only labels the default id)."""
    if not isinstance(obj, dict):
        raise HetaInputError(f"expected an object, got {type(obj).__name__}")
    text = obj.get("text", obj.get("input_text"))
    answer = obj.get("answer")
    if not isinstance(text, str) or not text.strip():
        raise HetaInputError("missing or empty 'text' (or 'input_text')")
    if not isinstance(answer, str) or not answer.strip():
        raise HetaInputError("missing or empty 'answer'")
    unlabelled = obj.get("unlabelled", False)
    if not isinstance(unlabelled, bool):
        raise HetaInputError(f"'unlabelled' must be true or false, got {unlabelled!r}")
    named = {"support": ("support", "support_segment", "sciq_support_segment"),
             "distractor": ("distractor", "distractor_segment", "narrative_segment")}
    if unlabelled:  # faithfulness metrics only (a sequence-level prompt): no segment may be given
        given = [k for what, names in named.items() for k in (*names, f"{what}_span", f"{what}_spans") if k in obj]
        if given:
            raise HetaInputError(f"an unlabelled example has no segments; it gives {', '.join(given)}")
        segments = {"support": [], "distractor": []}
    else:
        segments = {what: _segment(obj, text, what, names) for what, names in named.items()}
    for a, b in segments["support"]:
        for c, d in segments["distractor"]:
            if max(a, c) < min(b, d):
                raise HetaInputError("the support and distractor segments overlap")
    words = [w for s0, s1 in segments["support"] for w in _word_spans(text, s0, s1)]
    gold: list[tuple[int, int]] = []
    if "important_spans" in obj:
        gold = [_span(v, text, "important") for v in obj["important_spans"]]
    elif "important_word_indices" in obj or "important_word_indices_in_sciq_support" in obj:
        idx = obj.get("important_word_indices", obj.get("important_word_indices_in_sciq_support"))
        if not isinstance(idx, list) or any(not isinstance(i, int) or not 0 <= i < len(words) for i in idx):
            raise HetaInputError(f"important word indices {idx!r} do not index the {len(words)} support words")
        gold = [words[i] for i in idx]
    elif "important_words" in obj:
        wanted = {w.lower().strip(_STRIP) for w in obj["important_words"]}
        gold = [(s, e) for s, e in words if text[s:e].lower() in wanted]
    cue = obj.get("cue", "\nAnswer:")
    if not isinstance(cue, str):
        raise HetaInputError(f"'cue' must be a string, got {type(cue).__name__}")
    return Example(id=str(obj.get("id", f"example_{index:05d}")), text=text, answer=answer.strip(),
                   support=segments["support"], distractor=segments["distractor"], gold=gold, cue=cue)


def load_examples(path: str | Path) -> list[Example]:
    """Load the released JSON or a JSONL file; errors name the example (JSON) or line number (JSONL)."""
    path = Path(path)
    if not path.exists():
        raise HetaInputError(f"data file {path} does not exist")
    raw = path.read_text(encoding="utf-8")
    examples: list[Example] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                examples.append(parse_example(json.loads(line), len(examples)))
            except json.JSONDecodeError as e:
                raise HetaInputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except HetaInputError as e:
                raise HetaInputError(f"{path}:{lineno}: {e}") from None
    else:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HetaInputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        items = data.get("examples") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise HetaInputError(f"{path}: expected a list of examples or an object with 'examples'")
        for i, obj in enumerate(items):
            try:
                examples.append(parse_example(obj, i))
            except HetaInputError as e:
                raise HetaInputError(f"{path}: example {i}: {e}") from None
    if not examples:
        raise HetaInputError(f"{path}: no examples")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise HetaInputError(f"{path}: duplicate example ids (resuming needs unique ids)")
    return examples


def default_data_path() -> Path:
    """``../shared/data/curated_qa_100.json`` beside the checkout that holds this package."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "curated_qa_100.json"
