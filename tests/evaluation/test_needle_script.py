"""The needle-in-a-haystack script's bookkeeping (benchmarks/eval/needle.py): where the needle goes, how token
scores become sentence scores, and how share and cite@1 are counted. The model runs are in the script itself."""

import importlib.util
from pathlib import Path

import pytest

from heta_fast.units import sentence_spans

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval" / "needle.py"


@pytest.fixture(scope="module")
def needle():
    spec = importlib.util.spec_from_file_location("needle_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_needle_is_one_sentence_after_prose(needle):
    doc = "Heading\n=======\n\nFirst one. Second one here.\n\nThird, last one."
    for depth in (0.0, 0.5, 0.99):
        text, span = needle.plant(doc, "A planted fact.", depth)
        assert text[span[0]:span[1]] == "A planted fact."
        assert span in sentence_spans(text)  # the splitter sees it as a sentence of its own
        assert text[: span[0] - 1].rstrip()[-1] == "."  # never glued to a heading's underline


def test_token_scores_sum_per_sentence(needle):
    text = "Ab cd. Ef gh."
    sentences = sentence_spans(text)  # (0, 6), (7, 13)
    offsets = [(0, 0), (0, 2), (2, 5), (5, 6), (6, 9), (9, 13)]  # a BOS without characters, then words
    assert needle.per_sentence([9.0, 1.0, 2.0, 3.0, 4.0, None], offsets, sentences) == [6.0, 4.0]


def test_share_and_cite_at_one(needle):
    row = {"needle_index": 1, "scores": {"a": [1.0, 3.0, -2.0], "b": [2.0, 2.0, 0.0], "c": [0.0, 0.0, 0.0]}}
    m = needle.metrics(row)
    assert m["a"] == {"share": 0.75, "cite1": 1, "rank": 1}
    assert m["b"] == {"share": 0.5, "cite1": 0, "rank": 2}  # a tie at the top is not a citation: it ranks last of the tie
    assert m["c"] == {"share": 0.0, "cite1": 0, "rank": 3}
    # HETA's own ranks, where stored (levels rank scored units first, whatever the unscored ones' parent scores)
    row = {"needle_index": 1, "scores": {"h": [5.0, 0.2, 0.0]}, "ranks": {"h": [2, 1, 3]}}
    assert needle.metrics(row)["h"]["rank"] == 1 and needle.metrics(row)["h"]["cite1"] == 1


def test_distractor_share_and_order(needle):
    row = {"needle_index": 0, "distractor_index": 2, "scores": {"a": [3.0, 1.0, 4.0], "b": [5.0, 0.0, 0.0]}}
    m = needle.metrics(row)
    assert m["a"]["cite1"] == 0 and m["a"]["above_distractor"] == 0 and m["a"]["distractor_share"] == 0.5
    assert m["a"]["distractor1"] == 1 and m["a"]["rank"] == 2
    assert m["b"] == {"share": 1.0, "cite1": 1, "rank": 1, "distractor_share": 0.0, "distractor1": 0,
                      "above_distractor": 1}
    for spec in needle.NEEDLES:  # a distractor is another sentence that shares the cue's frame, not the answer
        assert spec["distractor"] != spec["needle"] and spec["answer"].strip() not in spec["distractor"]


def test_level_one_records_each_block_and_its_shares(needle):
    from types import SimpleNamespace

    from heta_fast.result import Unit

    text = "One. Two. Three. Cue"
    sentences = [(0, 4), (5, 9), (10, 16)]  # the document's sentences; the cue after them is a unit too
    blocks = [Unit("One. Two.", (0, 9), (0, 4), "block", 0.1, M=0.2, S=1.0, I=3.0, rank=2, refined=False),
              Unit("Three. Cue", (10, 20), (4, 8), "block", 0.5, M=0.6, S=3.0, I=1.0, rank=1, refined=True)]
    units = [Unit(text[a:b], (a, b), (2 * i, 2 * i + 2), "sentence", 0.1, parent=i // 2, scored=i >= 2)
             for i, (a, b) in enumerate(sentences + [(17, 20)])]
    out = needle.level_one(SimpleNamespace(coarse_units=blocks, units=units), sentences)
    assert [b["sentences"] for b in out] == [[0, 2], [2, 3]]
    assert [b["expanded"] for b in out] == [False, True] and [b["rank"] for b in out] == [2, 1]
    assert out[0]["M_share"] == pytest.approx(0.25) and out[1]["S_share"] == pytest.approx(0.75)
    assert out[0]["I_share"] == pytest.approx(0.75)


def test_a_case_is_built_the_same_way_every_time(needle):
    """build_case (the harness and needle_scored_check.py rebuild cases with it): the needle and its distractor are
    sentences of the document at the indices the row records, and the prompt ends with the cue."""
    from types import SimpleNamespace

    from heta_fast.testing import CharTokenizer

    attr = SimpleNamespace(tokenizer=CharTokenizer())
    docs = [" ".join(f"Sentence number {i} says little." for i in range(40))]
    prompt, sentences, row = needle.build_case(attr, docs, needle.NEEDLES, 0, 600, 0.5, True)
    spec = needle.NEEDLES[0]
    text = prompt[: -len("\n\n" + spec["cue"])]
    assert prompt.endswith("\n\n" + spec["cue"]) and sentences == sentence_spans(text)
    assert text[slice(*sentences[row["needle_index"]])] == spec["needle"]
    assert text[slice(*sentences[row["distractor_index"]])] == spec["distractor"]
    assert (row["needle"], row["depth"], row["sentences"]) == (0, 0.5, len(sentences))
    assert needle.build_case(attr, docs, needle.NEEDLES, 0, 600, 0.5, True) == (prompt, sentences, row)


def test_level_one_climbs_through_every_coarse_level(needle):
    """With blocks of blocks, a sentence's parent is a sub-block; level_one credits it to the block above that."""
    from types import SimpleNamespace

    from heta_fast.result import Unit

    text = "One. Two. Three. Cue"
    sentences = [(0, 4), (5, 9), (10, 16)]
    blocks = [Unit("One. Two.", (0, 9), (0, 4), "block", 0.1, M=0.2, S=1.0, I=3.0, rank=2, refined=False),
              Unit("Three. Cue", (10, 20), (4, 8), "block", 0.5, M=0.6, S=3.0, I=1.0, rank=1, refined=True)]
    subs = [Unit("One.", (0, 4), (0, 2), "block", 0.1, rank=3, scored=False, parent=0, level=2),
            Unit("Two.", (5, 9), (2, 4), "block", 0.1, rank=4, scored=False, parent=0, level=2),
            Unit("Three. Cue", (10, 20), (4, 8), "block", 0.5, rank=1, refined=True, parent=1, level=2)]
    units = [Unit(text[a:b], (a, b), (2 * i, 2 * i + 2), "sentence", 0.1, parent=2 + min(i, 2), level=3)
             for i, (a, b) in enumerate(sentences + [(17, 20)])]
    out = needle.level_one(SimpleNamespace(coarse_units=blocks + subs, units=units), sentences)
    assert [b["sentences"] for b in out] == [[0, 2], [2, 3]] and [b["expanded"] for b in out] == [False, True]


def test_the_plan_is_made_before_the_run_it_is_compared_with(needle):
    # A plan made after a long run reads the memory the allocator kept as taken and records the run as unfit.
    from heta_fast import Attributor
    from heta_fast.testing import NoBosTokenizer, tiny_model

    class Tokenizer(NoBosTokenizer):  # decodes what it encodes (characters below chr(90)), as the script checks
        def decode(self, ids):
            return "".join(chr(i - 1) for i in ids)

    attr = Attributor(tiny_model("llama"), Tokenizer(), progress=False)
    calls = []
    plan, attribute = attr.plan, attr.attribute
    attr.plan = lambda *a, **kw: calls.append("plan") or plan(*a, **kw)
    attr.attribute = lambda *a, **kw: calls.append("attribute") or attribute(*a, **kw)
    prompt = "Ann hid the key. Bob saw a cat. The key is under the mat. Where is the key? It is"
    sentences = [(m.start(), m.end()) for m in __import__("re").finditer(r"[^.?]+[.?]", prompt)]
    row = needle.run_one(attr, {"preset": "document", "max_memory": 2**30}, prompt, sentences, "M",
                         ["heta_units"], seed=0)
    assert calls == ["plan", "attribute"]
    record = row["plan_vs_actual"]["heta_units"]
    assert record["plan_peak_mib"] > 0  # the plan's own figures beside the run's (a tiny model's run rounds to 0.0 s)
    assert record["actual_seconds"] == record["stages"]["total"] >= 0
