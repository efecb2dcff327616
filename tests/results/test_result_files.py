"""Saved results load back: stored files of schema 1 (written by heta_fast 0.1), round trips, and clear errors.

The fixtures in ``fixtures/`` were written once by ``fixtures/make_fixtures.py`` and are never rewritten:
they stand for the files users already have.
"""

import json
from pathlib import Path

import pytest

from heta_fast import Attribution, AttributionSequence, HetaInputError
from heta_fast.result import SCHEMA_VERSION, ResultFormatError, floats, load

FIXTURES = Path(__file__).parent / "fixtures"
SINGLE = FIXTURES / "attribution_v1.json"
SEQUENCE = FIXTURES / "attribution_sequence_v1.json"


def _raw(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _expected_scores(r: Attribution) -> list[float]:
    """M * (beta*S/sum S + gamma*I/sum I), the default preset's formula, from the loaded components."""
    beta, gamma = r.options["beta"], r.options["gamma"]
    assert r.options["normalize"] == "sum"
    sS, sI = sum(r.S), sum(r.I)
    return [m * (beta * s / sS + gamma * i / sI) for m, s, i in zip(r.M, r.S, r.I)]


def _as_current(raw: dict) -> dict:
    """A stored older-1.x result as the current version writes it: its schema_version, and the fields added
    since with their empty values (1.2: units None; 1.3: coarse_units None, a unit scored at level 1 without a
    parent). Nothing else may change."""
    if "targets" in raw:
        return {**raw, "schema_version": SCHEMA_VERSION, "targets": [_as_current(t) for t in raw["targets"]]}
    units = raw.get("units")
    if units is not None:
        units = [{"scored": True, "parent": None, "level": 1, **u} for u in units]
    return {**raw, "schema_version": SCHEMA_VERSION, "units": units, "coarse_units": raw.get("coarse_units")}


def test_stored_single_result_loads_into_the_right_fields_and_round_trips():
    raw = _raw(SINGLE)
    assert raw["schema_version"].split(".")[0] == SCHEMA_VERSION.split(".")[0]
    r = Attribution.load(SINGLE)
    assert r.to_dict() == _as_current(raw)  # nothing lost, nothing invented
    assert r.text == "hello world" and r.model == "tiny-llama"
    assert r.tokens[1:] == list("hello worl") and r.token_ids[1] == 1 + ord("h") % 90
    assert r.target_position == len(r.tokens) == 11 and r.target_token == "d"
    assert r.offsets[1] == (0, 1) and isinstance(r.offsets[1], tuple)
    assert r.seed == 3 and r.options["num_probes"] == 2 and r.sink_gate_mass is None
    assert abs(sum(r.M) - 1) < 1e-6
    # The components sit in the right fields: the score is recomputed from M, S, I and the stored options.
    assert max(abs(a - b) for a, b in zip(r.scores, _expected_scores(r))) < 1e-9
    assert r.topk(1)[0][2] == max(r.scores)
    # And back through a file.
    assert Attribution.from_dict(json.loads(r.to_json())).to_dict() == _as_current(raw)


def test_stored_sequence_loads_and_round_trips(tmp_path):
    raw = _raw(SEQUENCE)
    seq = AttributionSequence.load(SEQUENCE)
    assert isinstance(seq, AttributionSequence) and len(seq) == 2
    assert seq.to_dict() == _as_current(raw)
    assert [r.target_token for r in seq] == ["f", "g"] and [r.target_position for r in seq] == [7, 8]
    assert seq[1].tokens[: len(seq[0].tokens)] == seq[0].tokens and seq[1].tokens[-1] == "f"
    assert all(0 < r.sink_gate_mass < 1 for r in seq) and all(r.options["sink_token"] == 5 for r in seq)
    for r in seq:
        assert max(abs(a - b) for a, b in zip(r.scores, _expected_scores(r))) < 1e-9
    path = tmp_path / "again.json"
    seq.to_json(str(path))
    assert AttributionSequence.load(path).to_dict() == _as_current(raw)
    assert AttributionSequence.from_dict(raw).to_dict() == _as_current(raw)


def test_load_picks_the_kind_and_wrong_loader_says_which_to_use():
    assert isinstance(load(SINGLE), Attribution)
    assert isinstance(load(SEQUENCE), AttributionSequence)
    with pytest.raises(ResultFormatError, match="AttributionSequence.load"):
        Attribution.load(SEQUENCE)
    with pytest.raises(ResultFormatError, match="Attribution.load"):
        AttributionSequence.load(SINGLE)


def test_older_and_newer_minor_versions_load():
    old = _raw(SINGLE)
    old["schema_version"] = "1.0"
    del old["sink_gate_mass"]  # 1.0 had no sink_gate_mass
    r = Attribution.from_dict(old)
    assert r.sink_gate_mass is None and r.scores == old["scores"]
    newer = _raw(SINGLE)
    newer["schema_version"] = "1.9"
    newer["a_field_from_the_future"] = {"x": 1}  # minor versions only add fields: ignored here
    assert Attribution.from_dict(newer).scores == newer["scores"]
    seq = _raw(SEQUENCE)
    seq["schema_version"] = "1.9"
    for item in seq["targets"]:
        del item["schema_version"]  # items inherit the sequence's version
    assert len(AttributionSequence.from_dict(seq)) == 2


@pytest.mark.parametrize("version, message", [
    ("2.0", r"schema_version 2\.0 by a newer heta_fast.*upgrade heta_fast"),
    ("0.3", r"older, unsupported"),
    ("one", r"not of the form MAJOR\.MINOR"),
])
def test_other_major_versions_are_refused_by_name(version, message):
    d = _raw(SINGLE)
    d["schema_version"] = version
    with pytest.raises(ResultFormatError, match=message):
        Attribution.from_dict(d)
    s = _raw(SEQUENCE)
    s["schema_version"] = version
    with pytest.raises(ResultFormatError, match=message):
        AttributionSequence.from_dict(s)


def _broken(edit):
    d = _raw(SINGLE)
    edit(d)
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("schema_version"), "no schema_version"),
    (lambda d: d.pop("scores"), "field 'scores' is missing"),
    (lambda d: d["scores"].pop(), "'scores' has 10 entries for 11 context tokens"),
    (lambda d: d["M"].__setitem__(2, "x"), r"M\[2\] should be a number"),
    (lambda d: d["token_ids"].__setitem__(0, 1.5), r"token_ids\[0\] should be a token id"),
    (lambda d: d["target"].pop("token_id"), "target: field 'token_id' is missing"),
    (lambda d: d["target"].__setitem__("position", 4), "target position 4 should equal"),
    (lambda d: d.__setitem__("options", [1]), "field 'options' should be dict"),
    (lambda d: d["offsets"].__setitem__(3, [1]), r"offsets\[3\] should be a \[start, end\] pair"),
])
def test_malformed_results_get_an_error_naming_the_field(edit, message):
    with pytest.raises(ResultFormatError, match=message):
        Attribution.from_dict(_broken(edit))


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ResultFormatError, match="bad.json is not JSON"):
        Attribution.load(bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ResultFormatError, match="expected a JSON object, got list"):
        AttributionSequence.load(bad)
    seq = _raw(SEQUENCE)
    seq["targets"][1]["scores"] = None
    bad.write_text(json.dumps(seq), encoding="utf-8")
    with pytest.raises(ResultFormatError, match=r"targets\[1\]: field 'scores' is missing"):
        AttributionSequence.load(bad)
    assert issubclass(ResultFormatError, HetaInputError)  # callers catching input errors catch these too


def test_floats_is_the_one_converter():
    import torch

    assert floats(None) is None
    assert floats(torch.tensor([1.5, 2.0], dtype=torch.float32)) == [1.5, 2.0]
    assert floats((1, 2)) == [1.0, 2.0] and all(type(v) is float for v in floats([1, 2]))
