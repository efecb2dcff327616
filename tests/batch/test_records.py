"""Batch input records: option overrides are checked by HetaOptions (types, ranges, finite numbers) and bad
Unicode is a malformed record, all before any model call."""

import json

import pytest

from heta_fast import HetaOptions
from heta_fast.batch.records import NOT_FINGERPRINTED, parse_line


def _parsed(line: str):
    return parse_line(line.encode(), 1, "job", HetaOptions())


@pytest.mark.parametrize("line, words", [
    ('{"text": "abc", "beta": NaN}', "beta must be a finite number"),  # Python's JSON reads NaN and Infinity
    ('{"text": "abc", "gamma": Infinity}', "gamma must be a finite number"),
    ('{"text": "abc", "beta": 1e309}', "beta must be a finite number"),
    ('{"text": "abc", "overlap": 1.0}', "overlap must be a finite number >= 0 and < 1"),
    ('{"text": "abc", "seed": -1}', "seed must be an integer from 0"),
    ('{"text": "abc", "layers": true}', "layers must be an integer >= 1"),
    ('{"text": "abc", "components": "MI"}', "components must be a list"),
    ('{"text": "abc", "max_memory": 10}', "max_memory must be an integer >= 1048576"),
])
def test_bad_option_values_are_malformed_records(line, words):
    rec = _parsed(line)
    assert rec.error is not None and rec.error.startswith("bad option: ") and words in rec.error, rec.error


def test_lone_surrogates_are_malformed_records():
    rec = _parsed(json.dumps({"id": "s", "text": "\u0000\ud800 zz"}))
    assert rec.id == "s" and "not valid Unicode" in rec.error and "U+D800" in rec.error
    rec = _parsed(json.dumps({"text": "ok", "target": "\udfff"}))
    assert "target is not valid Unicode" in rec.error


def test_only_machine_options_are_left_out_of_the_fingerprint():
    assert NOT_FINGERPRINTED == ("max_memory",)


@pytest.mark.parametrize("line, words", [
    # JSON true/false are not numbers: never position 1, one generated token or seed 0.
    ('{"text": "abc", "target": true}', '"target" must be an integer position'),
    ('{"text": "abc", "target": 1.0}', '"target" must be an integer position'),
    ('{"text": "abc", "generate": true}', '"generate" must be a positive integer'),
    ('{"ids": [3, true, 5]}', '"ids" must be a non-empty list of integer'),
    ('{"ids": [3, 4.0, 5]}', '"ids" must be a non-empty list of integer'),
    ('{"id": true, "text": "abc"}', "'id' must be a string or an integer"),
    ('{"text": "abc", "num_probes": true}', "num_probes must be an integer"),
    ('{"text": "abc", "seed": false}', "seed must be an integer"),
    ('{"text": "abc", "beta": true}', "beta must be a finite number"),
    ('{"text": "abc", "window": true}', "window must be an integer"),
])
def test_booleans_are_not_numbers_in_records(line, words):
    rec = _parsed(line)
    assert rec.error is not None and words in rec.error, rec.error
