"""Context tokens grouped into units by the rules of SPEC §6 (heta_fast.units.partition), and the errors."""

import pytest

from heta_fast.errors import HetaInputError
from heta_fast.options import HetaOptions
from heta_fast.units import partition

# Byte-level BPE offsets as SmolLM2's tokenizer reports them: the space before a word belongs to its token.
TEXT = "Hello world. The cat sat.\n\nNew para here."
TOKENS = ["Hello", " world", ".", " The", " cat", " sat", ".", "\n", "\n", "New", " para", " here", "."]


def offsets_of(tokens, text=TEXT):
    out, pos = [], 0
    for tok in tokens:
        assert text[pos : pos + len(tok)] == tok
        out.append((pos, pos + len(tok)))
        pos += len(tok)
    return out


def groups(units):
    return [("".join(TOKENS[u.start : u.end]), u.kind) for u in units]


def test_sentences_take_the_space_before_their_first_word():
    units = partition("sentence", TEXT, offsets_of(TOKENS), len(TOKENS))
    assert groups(units) == [("Hello world.", "sentence"), (" The cat sat.", "sentence"),
                             ("\n\nNew para here.", "sentence")]
    assert [(u.start, u.end) for u in units] == [(0, 3), (3, 7), (7, 13)]
    assert TEXT[units[1].char_start : units[1].char_end] == " The cat sat."


def test_paragraphs_and_a_context_cut_inside_a_unit():
    units = partition("paragraph", TEXT, offsets_of(TOKENS), 10)  # target at position 10: context 0 … 9
    assert groups(units) == [("Hello world. The cat sat.", "paragraph"), ("\n\nNew", "paragraph")]


def test_spans_gaps_first_span_wins_and_special_tokens():
    offs = [(0, 0)] + offsets_of(TOKENS)  # a BOS without characters in front
    toks = ["<s>"] + TOKENS
    # " world" (5-11) overlaps both spans (0, 8) and (8, 12): it goes to the first.
    units = partition("spans", TEXT, offs, len(toks), spans=((0, 8), (8, 12), (17, 20)))
    got = [("".join(toks[u.start : u.end]), u.kind, (u.char_start, u.char_end)) for u in units]
    assert got == [("<s>", "special", (None, None)), ("Hello world", "span", (0, 8)), (".", "span", (8, 12)),
                   (" The", "gap", (12, 17)), (" cat", "span", (17, 20)),
                   (" sat.\n\nNew para here.", "gap", (20, len(TEXT)))]
    # Every position in exactly one unit, in order, no unit splitting a token.
    assert [i for u in units for i in range(u.start, u.end)] == list(range(len(toks)))


def test_token_units_and_errors():
    assert [(u.start, u.end) for u in partition("token", None, None, 3)] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(HetaInputError, match="token ids carry no text"):
        partition("sentence", None, None, 3)
    with pytest.raises(HetaInputError, match="outside the text"):
        partition("spans", TEXT, offsets_of(TOKENS), len(TOKENS), spans=((0, 5), (30, 99)))
    with pytest.raises(HetaInputError, match="overlap"):
        HetaOptions(spans=[(0, 5), (4, 9)])
    with pytest.raises(HetaInputError, match="empty"):
        HetaOptions(spans=[(3, 3)])
    with pytest.raises(HetaInputError, match="pair of integer"):
        HetaOptions(spans=[(0, 2.5)])
    with pytest.raises(HetaInputError, match="either"):
        HetaOptions(units="sentence", spans=[(0, 5)])
    assert HetaOptions(spans=[[6, 9], [0, 5]]).spans == ((0, 5), (6, 9))  # JSON lists, sorted
