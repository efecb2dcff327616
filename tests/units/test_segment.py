"""Sentence and paragraph splitting on hard cases of real text (heta_fast.units.segment)."""

import pytest

from heta_fast.units.segment import paragraph_spans, sentence_spans


def sentences(text):
    return [text[a:b] for a, b in sentence_spans(text)]


@pytest.mark.parametrize("text,expect", [
    ("Dr. Smith paid $3.50 for the U.S. edition. It was cheap!",
     ["Dr. Smith paid $3.50 for the U.S. edition.", "It was cheap!"]),
    ("We use e.g. apples, i.e. fruit. Mr. and Mrs. Jones agree, etc. The end.",
     ["We use e.g. apples, i.e. fruit.", "Mr. and Mrs. Jones agree, etc. The end."]),
    ("Pi is 3.14159 in v2.0.1; call a.b() or see example.com. Next one.",
     ["Pi is 3.14159 in v2.0.1; call a.b() or see example.com.", "Next one."]),
    ('"Stop!" he shouted. She said: "No." Then silence.',
     ['"Stop!" he shouted.', 'She said: "No."', "Then silence."]),
    ("Really?! Yes... and no. Wait… Done", ["Really?!", "Yes... and no.", "Wait…", "Done"]),
    ("J. R. R. Tolkien wrote it. Fig. 3 shows no. 4 clearly.", ["J. R. R. Tolkien wrote it.", "Fig. 3 shows no. 4 clearly."]),
    ("(See the note.) The rest follows.", ["(See the note.)", "The rest follows."]),
    ("No final punctuation here", ["No final punctuation here"]),
    ("  Leading and trailing space.   ", ["Leading and trailing space."]),
], ids=["abbrev_decimal", "latin_abbrev", "code_and_versions", "quotes", "ellipsis_and_marks", "initials",
        "brackets", "no_final_stop", "whitespace"])
def test_sentences(text, expect):
    assert sentences(text) == expect


def test_newlines_lists_headings_and_hard_wrapping():
    text = ("# Results\nThe method works well\nacross the board. It is fast.\nSteps:\n- load the model\n"
            "- run it\n1. first\n2) second, wrapped\n   over two lines\n* last")
    assert sentences(text) == ["# Results", "The method works well\nacross the board.", "It is fast.", "Steps:",
                               "- load the model", "- run it", "1. first", "2) second, wrapped\n   over two lines",
                               "* last"]


def test_fenced_code_is_one_unit_and_blank_lines_end_paragraphs():
    text = "Run this.\n\n```python\nx = 1.5\n\ny = x. real  # Not a sentence.\n```\nThen stop. Ok\n\nLast para."
    assert sentences(text) == ["Run this.", "```python\nx = 1.5\n\ny = x. real  # Not a sentence.\n```",
                               "Then stop.", "Ok", "Last para."]
    assert [text[a:b] for a, b in paragraph_spans(text)] == [
        "Run this.", "```python\nx = 1.5\n\ny = x. real  # Not a sentence.\n```", "Then stop. Ok", "Last para."]


def test_spans_are_ordered_disjoint_and_inside_the_text():
    text = "One. Two!  Three?\n\nFour\n\n\n  Five."
    spans = sentence_spans(text)
    assert all(0 <= a < b <= len(text) for a, b in spans)
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))
    assert sentences(text) == ["One.", "Two!", "Three?", "Four", "Five."]
    assert paragraph_spans("") == [] and sentence_spans(" \n ") == []
