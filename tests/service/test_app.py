"""The JSON service on a real uvicorn server on loopback, with a tiny model: results, errors, queueing."""

import os
import subprocess
import sys
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import pytest

from heta_fast import Attribution, HetaOptions
from heta_fast.result import SCHEMA_VERSION
from heta_fast.service.app import AttributeOptions, AttributionService, FieldError, create_app
from heta_fast.service.cli import load_attributor


@pytest.fixture(scope="module")
def api(http_request):
    """(status, body) of one request (this module does not look at headers)."""

    def call(*args, **kwargs):
        status, body, _ = http_request(*args, **kwargs)
        return status, body

    return call


@pytest.fixture(scope="module")
def service():
    return AttributionService(load_attributor(tiny_model="llama"), max_tokens=64, max_queue=16)


@pytest.fixture(scope="module")
def server(service, serve_module):
    return serve_module(create_app(service)).url


def test_health(server, api):
    status, body = api(server + "/health")
    assert status == 200
    assert body["status"] == "ok" and body["model"] == "tiny-llama"
    assert body["schema_version"] == SCHEMA_VERSION and body["max_tokens"] == 64


def test_attribute_returns_the_result_schema(server, service, api):
    status, body = api(server + "/attribute", "POST", {"text": "hello world", "options": {"num_probes": 2}})
    assert status == 200
    assert body["schema_version"] == SCHEMA_VERSION
    r = Attribution.from_dict(body)
    # CharTokenizer's BOS is the sink (special_tokens="sink"), not a position.
    assert r.target_position == 10 and r.target_token == "d" and len(r.scores) == 10
    assert body["options"]["num_probes"] == 2 and body["seed"] == 0
    assert set(body["timings"]) >= {"gate", "hessian", "kl", "total"}
    # Same numbers as the library called directly.
    direct = service.attributor.attribute("hello world", num_probes=2)
    assert max(abs(a - b) for a, b in zip(r.scores, direct.scores, strict=True)) < 1e-9


def test_targets_ids_presets_and_continuations(server, api):
    status, body = api(server + "/attribute", "POST",
                           {"ids": [0, 5, 9, 13, 40, 2], "target": -2, "options": {"components": ["M", "I"]}})
    # The leading 0 is the tokenizer's BOS: the sink, so positions count from the 5.
    assert status == 200 and body["target"]["position"] == 3 and body["S"] is None and body["text"] is None
    status, body = api(server + "/attribute", "POST",
                           {"text": "abc", "target": "xy", "preset": "fast", "options": {"num_probes": 1}})
    assert status == 200 and [t["target"]["token"] for t in body["targets"]] == ["x", "y"]
    assert body["targets"][0]["options"]["hessian"] == "lowrank"  # from the preset
    status, body = api(server + "/attribute", "POST", {"text": "abc", "generate": 2, "options": {"num_probes": 1}})
    assert status == 200 and len(body["targets"]) == 2
    for layers in ("auto", None, 1):  # the tiny model has 2 layers: "auto" is all of them (None)
        status, body = api(server + "/attribute", "POST", {"text": "abc", "options": {"layers": layers}})
        assert status == 200 and body["options"]["layers"] == (1 if layers == 1 else None)


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"text": ""}, "text", "empty"),
        ({"text": "   "}, "text", "empty"),
        ({}, "text", "exactly one"),
        ({"text": "abc", "ids": [1, 2]}, "text", "exactly one"),
        ({"ids": []}, "ids", "empty"),
        ({"ids": [0, 3, 500]}, "ids", "vocabulary"),
        ({"ids": [3, 4, 5], "options": {"units": "sentence"}}, "options.units", "needs text"),
        ({"text": "abc", "options": {"bogus": 1}}, "options.bogus", "unknown option"),
        ({"text": "abc", "options": {"num_probes": 0}}, "options.num_probes", ">= 1"),
        ({"text": "abc", "options": {"num_probes": "many"}}, "options.num_probes", "integer"),
        ({"text": "abc", "options": {"hessian": "full"}}, "options.hessian", "exact"),
        ({"text": "abc", "options": {"mask": "token"}}, "options.mask", "mask_token_id"),
        ({"text": "abc", "options": {"overlap": 1.5}}, "options.overlap", "overlap"),
        ({"text": "abc", "options": {"components": ["X"]}}, "options.components", "M"),
        ({"text": "abc", "options": {"layers": "some"}}, "options.layers", ""),
        ({"text": "abc", "options": {"layers": 0}}, "options.layers", ">= 1"),
        ({"text": "abc", "options": {"spans": [[0, 9]]}}, "options.spans", "outside the text"),
        ({"text": "abcdef", "options": {"spans": [[0, 3], [2, 4]]}}, "options.spans", "overlap"),
        ({"text": "abc", "options": {"units": "sentence", "spans": [[0, 1]]}}, "options.spans", "not both"),
        ({"text": "abc", "options": {"refine": 1}}, "options.refine", "larger than a token"),
        ({"text": "abc", "target": 99}, "target", "out of range"),
        ({"text": "abc", "target": 0}, "target", "no context"),
        ({"text": "abc", "target": ""}, "target", "empty"),
        ({"text": "abc", "target": [1]}, "target", ""),
        # JSON booleans are not numbers, and numbers are not converted from strings or floats.
        ({"text": "abc", "target": True}, "target", ""),
        ({"text": "abc", "target": 1.0}, "target", ""),
        ({"text": "abc", "generate": True}, "generate", "integer"),
        ({"text": "abc", "generate": "2"}, "generate", "integer"),
        ({"ids": [3, True, 5]}, "ids", "integer"),
        ({"ids": [3, "4", 5]}, "ids", "integer"),
        ({"text": "abc", "options": {"num_probes": True}}, "options.num_probes", "integer"),
        ({"text": "abc", "options": {"seed": False}}, "options.seed", "integer"),
        ({"text": "abc", "options": {"beta": True}}, "options.beta", "number"),
        ({"text": "abc", "options": {"layers": True}}, "options.layers", ""),
        ({"text": "abc", "options": {"window": True}}, "options.window", ""),
        ({"text": "abc", "options": {"refine": True}}, "options.refine", ""),
        ({"text": "abc", "generate": 0}, "generate", "greater than"),
        ({"text": "abc", "generate": 2, "target": 1}, "generate", "either"),
        ({"text": "abc", "preset": "huge"}, "preset", "unknown preset"),
        ({"text": "abc", "colour": "red"}, "colour", "unknown field"),
        ({"text": "x" * 100}, "text", "at most 64"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, body, field, words, api):
    status, resp = api(server + "/attribute", "POST", body)
    assert 400 <= status < 500, resp
    assert resp["error"].startswith(field), resp["error"]  # "options.components.0: ..." is fine
    assert words in resp["error"]
    assert ".".join(p for p in resp["detail"][0]["loc"] if p != "body").startswith(field)


def test_too_long_input_is_413(server, api):
    status, resp = api(server + "/attribute", "POST", {"text": "x" * 100})
    assert status == 413 and "--max-tokens" in resp["error"]


def test_malformed_json_is_422(server, api):
    status, resp = api(server + "/attribute", "POST", raw=b"{not json")
    assert status == 422 and resp["detail"]


def test_options_schema_matches_heta_options():
    # The request schema is generated from the options (tests/test_options.py checks every front end).
    fields = set(HetaOptions.__dataclass_fields__)
    assert set(AttributeOptions.model_fields) == fields


def test_concurrent_requests_are_serialised(server, service, api):
    """Requests from 6 threads all succeed, give the sequential answer, and never overlap on the model."""
    active = {"now": 0, "max": 0}
    guard = threading.Lock()
    real = service.attributor.attribute

    def counting(*args, **kwargs):
        with guard:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        try:
            time.sleep(0.02)  # widen the window in which an unserialised second request would overlap
            return real(*args, **kwargs)
        finally:
            with guard:
                active["now"] -= 1

    texts = [f"abc{c}def" for c in "uvwxyz"]
    expected = [real(t, num_probes=1).scores for t in texts]
    service.attributor.attribute = counting
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(api, server + "/attribute", "POST", {"text": t, "options": {"num_probes": 1}})
                       for t in texts]
            results = [f.result(timeout=60) for f in futures]
    finally:
        del service.attributor.attribute  # back to the class method
    assert [s for s, _ in results] == [200] * 6
    for (_, body), exp in zip(results, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(body["scores"], exp, strict=True)) < 1e-9
    assert active["max"] == 1


def test_tokenize_endpoint(server, api):
    status, body = api(server + "/tokenize", "POST", {"text": "ab"})
    # Numbered as target positions: CharTokenizer's BOS is the sink, not a position.
    assert status == 200 and [(t["position"], t["token"]) for t in body["tokens"]] == [(0, "a"), (1, "b")]


def test_plan_endpoint_is_the_engines_plan_after_the_same_checks(server, api):
    req = {"text": "Ab cd. Ef gh.\n\nIj kl. Mn", "options": {"units": "sentence", "coarse": "paragraph", "expand": 1,
                                                          "num_probes": 1}}
    status, body = api(server + "/plan", "POST", req)
    assert status == 200 and body["units"] == 4 and body["coarse_units"] == 2  # the context ends inside "Mn" and body["expand"] == 1
    assert [s["name"] for s in body["stages"]][:1] == ["gate"] and body["fits"] and body["work"] > 0
    assert {"I level 1", "I level 2"} <= {s["name"] for s in body["stages"]}
    status, body = api(server + "/plan", "POST", {"text": "   "})  # refused as /attribute refuses it
    assert status == 422 and body["error"].startswith("text:")


def test_serve_command_starts_a_server_process(free_port, api):
    """``heta-fast serve --tiny-model llama`` in a subprocess answers /health and /attribute, then stops."""
    port = free_port  # the child binds it; a clash would show up as a start-up failure below
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "heta_fast.cli", "serve", "--tiny-model", "llama", "--port", str(port),
         "--log-level", "warning", "--max-probes", "7", "--time-limit", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                status, body = api(url + "/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not come up in 60 s"
                time.sleep(0.2)
        assert status == 200 and body["model"] == "tiny-llama"
        assert body["limits"]["max_probes"] == 7 and body["limits"]["time_limit"] == 5  # the operator's flags
        status, body = api(url + "/attribute", "POST", {"text": "hello", "options": {"num_probes": 8}})
        assert status == 413 and body["error"].startswith("options.num_probes:") and "--max-probes" in body["error"]
        status, body = api(url + "/attribute", "POST", {"text": "hello", "options": {"num_probes": 1}})
        assert status == 200 and body["target"]["token"] == "o"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_context_over_the_memory_budget_is_413_naming_max_memory():
    """A context whose Hessian–vector products do not fit ``max_memory`` is refused, not run out of memory."""
    service = AttributionService(load_attributor(tiny_model="llama"), max_tokens=256, max_work=10**9)
    ids = [1 + (i * 7) % 90 for i in range(150)]
    with pytest.raises(FieldError) as info:
        service.prepare(ids=ids, options={"max_memory": 2**20, "components": ["S"]})  # before it queues
    err = info.value
    assert err.field == "options.max_memory" and err.status == 413
    assert "max_memory" in str(err) and "window" in str(err)


def test_unit_requests_are_estimated_as_units_before_they_queue():
    """Units run the whole context in one window with one masked suffix per unit: a long text that the token
    level would refuse (work, windows) is admitted with sentence units, and spans errors come before queueing."""
    service = AttributionService(load_attributor(tiny_model="llama"), max_tokens=256, max_work=20_000,
                                 max_windows=2)
    text = "Ab cd. " * 30  # 30 sentences, 210 characters (one token each with the char tokenizer)
    with pytest.raises(FieldError) as info:
        service.prepare(text=text, options={"num_probes": 1, "layers": 1})
    assert info.value.status == 413 and "--max-work" in str(info.value)
    with pytest.raises(FieldError, match="--max-windows"):
        service.prepare(text=text, options={"num_probes": 1, "layers": 1, "window": 16, "components": ["M"]})
    with pytest.raises(FieldError) as info:  # units take no windows: said, not ignored
        service.prepare(text=text, options={"num_probes": 1, "layers": 1, "units": "sentence", "window": 16})
    assert info.value.field == "options.window" and info.value.status == 422
    job = service.prepare(text=text, options={"num_probes": 1, "layers": 1, "units": "sentence"})
    units = service.attributor.units(text, units="sentence")
    n = len(text)  # the context (the last character is the target) and the BOS, which is the sink: a unit too
    # One masked suffix per unit; the clean forward they start from is the gate's (counted there).
    assert len(units) == 30 and job.work.parts["I"] == sum(n - (u.start + 1) for u in units)
    assert job.work.parts["gate"] == n
    with pytest.raises(FieldError) as info:
        service.prepare(text=text, options={"units": "spans", "spans": [[0, 500]]})
    assert info.value.field == "options.spans"


def test_document_preset_runs_within_the_servers_memory_budget():
    """The `document` preset asks for 8 GiB; on a server with a smaller budget it runs within that budget
    (a preset suggests, the operator decides), while an explicit max_memory over it is refused."""
    service = AttributionService(load_attributor(tiny_model="llama"), max_tokens=256, max_memory=2**30)
    res = service.attribute(text="Ab cd. Ef gh. Ij", preset="document", options={"num_probes": 1})
    assert res.options["units"] == "sentence" and res.options["lowrank_passes"] == 1
    assert res.options["max_memory"] == 2**30 and len(res.units) == 3
    with pytest.raises(FieldError) as info:
        service.prepare(text="Ab cd. Ef", preset="document", options={"max_memory": 2**31})
    assert info.value.field == "options.max_memory" and "--max-memory" in str(info.value)
