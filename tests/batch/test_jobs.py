"""Batch jobs: results per record, errors file, crash/resume (injected, torn lines, SIGKILL), torchrun sharding."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heta_fast import Attributor, HetaOptions, cli
from heta_fast.batch import BatchError, errors_path, parts_dir, read_results, run_batch
from heta_fast.batch.outputs import part_paths
from heta_fast.batch.records import job_fingerprint, scan_input
from heta_fast.batch.shard import run_shard
from heta_fast.testing import CharTokenizer, tiny_model, torch_threads

PY = sys.executable
OPTS = HetaOptions(num_probes=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Subprocess runs use one thread each; so does this process, so float32 results are bit-identical.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def attributor():
    # The same model, tokenizer, options and name as `--tiny-model llama --num-probes 2` on the command line.
    return Attributor(tiny_model("llama"), CharTokenizer(), options=OPTS, name="tiny-llama")


def _records(n: int) -> list[dict]:
    """A mix of record kinds; most skip S (the expensive part) to keep the file fast, two keep it."""
    recs = []
    for i in range(n):
        text = f"rec {i}: the cat"[: 6 + i % 5]
        if i % 5 == 1:
            recs.append({"id": f"r{i}", "text": text, "target": 3, "seed": i, "num_probes": 1})
        elif i % 5 == 2:
            recs.append(
                {"ids": [1 + (7 * i + j) % 90 for j in range(5 + i % 3)], "meta": {"n": i}, "components": ["M", "I"]}
            )
        elif i % 5 == 3:
            recs.append({"text": text, "target": "ok", "components": ["M", "I"]})
        else:
            recs.append({"id": i * 10, "text": text, "components": ["M", "I"] if i % 5 == 0 else ["M"]})
    return recs


def _write(path: Path, lines) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []


def _strip_timings(x):
    """A record without what describes the machine rather than the result: seconds, and the memory budget
    (``max_memory="auto"`` is recorded as the bytes it resolved to, a share of the memory free at the time)."""
    if isinstance(x, dict):
        return {k: _strip_timings(v) for k, v in x.items() if k not in ("timings", "max_memory")}
    if isinstance(x, list):
        return [_strip_timings(v) for v in x]
    return x


def _close(a, b, rel=1e-5) -> bool:
    """Equal structure and values; floats to ``rel`` (other processes may use other thread counts)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-8)
    return a == b


@pytest.fixture(scope="module")
def reference_run(attributor, tmp_path_factory):
    """An uninterrupted single-process run of 10 records: what every other run must reproduce."""
    d = tmp_path_factory.mktemp("ref")
    src = _write(d / "in.jsonl", _records(10))
    summary = run_batch(attributor, src, d / "out.jsonl", progress=False)
    assert summary.results == 10 and summary.errors == 0 and summary.new_results == 10
    return src, [_strip_timings(x) for x in _lines(d / "out.jsonl")]


def _assert_exactly_once(out: Path, expected: list[dict], rel: float = 0.0):
    got = [_strip_timings(x) for x in _lines(out)]
    assert [g["key"] for g in got] == [e["key"] for e in expected]  # each once, in input order
    assert _close(got, expected, rel) if rel else got == expected


def test_output_lines_carry_keys_results_and_meta(reference_run):
    _, lines = reference_run
    assert [x["key"] for x in lines[:4]] == [0, "r1", 3, 4]  # the id, else the 1-based line number
    assert lines[1]["id"] == "r1" and lines[2]["id"] is None and lines[2]["line"] == 3
    assert lines[1]["result"]["target"]["position"] == 3 and lines[1]["result"]["seed"] == 1
    assert lines[2]["meta"] == {"n": 2} and lines[2]["result"]["text"] is None
    seq = lines[3]["result"]["targets"]  # continuation "ok": one attribution per token
    assert [t["target"]["token"] for t in seq] == ["o", "k"] and seq[0]["S"] is None
    assert abs(sum(lines[0]["result"]["M"]) - 1) < 1e-5


def test_malformed_lines_and_input_errors_go_to_errors_file(attributor, tmp_path):
    src = _write(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "text": "hello"},
            "not json",
            "",  # blank lines are not records
            {"text": "abc", "num_probe": 3},  # misspelled option
            {"id": "a", "text": "again"},  # duplicate id
            {"text": "abc", "target": 99},  # HetaInputError from the attribution itself
            {"text": "abc", "num_probes": 2.5},
            {"ids": [], "id": "empty"},
            "[1, 2]",
            {"ids": [3, 4, 5], "target": 1, "generate": 2},
            {"text": "abcd", "target": 2},
        ],
    )
    out = tmp_path / "out.jsonl"
    summary = run_batch(attributor, src, out, progress=False)
    assert [x["key"] for x in _lines(out)] == ["a", 11]
    errs = {e["line"]: e for e in _lines(errors_path(out))}
    assert errors_path(out).name == "out.errors.jsonl"
    assert sorted(errs) == [2, 4, 5, 6, 7, 8, 9, 10]
    assert "not valid JSON" in errs[2]["message"] and "'num_probe'" in errs[4]["message"]
    assert "duplicate id 'a' (first on line 1)" in errs[5]["message"] and errs[5]["key"] == 5
    assert errs[6]["error"] == "HetaInputError" and "out of range" in errs[6]["message"]
    assert "integer" in errs[7]["message"] and errs[8]["key"] == "empty" and "JSON object" in errs[9]["message"]
    assert all(errs[k]["error"] == "MalformedRecord" for k in (2, 4, 5, 7, 8, 9, 10))
    assert (summary.results, summary.errors) == (2, 8)
    # Errors are final: a second run redoes nothing; --retry-errors redoes exactly them.
    again = run_batch(attributor, src, out, progress=False)
    assert (again.new_results, again.new_errors, again.skipped) == (0, 0, 10)
    retry = run_batch(attributor, src, out, progress=False, retry_errors=True)
    assert (retry.new_results, retry.new_errors, retry.errors) == (0, 8, 8)
    assert sorted(e["line"] for e in _lines(errors_path(out))) == sorted(errs)


def test_injected_crash_then_resume_gives_every_record_once(attributor, reference_run, tmp_path):
    src, expected = reference_run
    out = tmp_path / "out.jsonl"
    seen = []

    def crash_after_five(rec):
        seen.append(rec.key)
        if len(seen) == 5:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected"):
        run_batch(attributor, src, out, progress=False, on_record=crash_after_five)
    assert len(_lines(out)) == 5
    summary = run_batch(attributor, src, out, progress=False)
    assert (summary.skipped, summary.new_results, summary.results) == (5, 5, 10)
    _assert_exactly_once(out, expected)


def test_ctrl_c_is_reported_and_resumable(attributor, reference_run, tmp_path):
    src, expected = reference_run
    out = tmp_path / "out.jsonl"

    def interrupt(rec):
        if rec.line == 3:
            raise KeyboardInterrupt

    assert run_batch(attributor, src, out, progress=False, on_record=interrupt).interrupted
    assert run_batch(attributor, src, out, progress=False).new_results == 7
    _assert_exactly_once(out, expected)


def test_torn_last_line_is_cut_off_and_redone(attributor, reference_run, tmp_path):
    src, expected = reference_run
    out = tmp_path / "out.jsonl"
    full = "".join(json.dumps(x) + "\n" for x in expected[:4])
    out.write_text(full + json.dumps(expected[4])[:-40])  # the crash tore the 5th line
    assert len(list(read_results(out))) == 4  # readers skip the torn line too
    summary = run_batch(attributor, src, out, progress=False)
    assert (summary.skipped, summary.new_results) == (4, 6)
    _assert_exactly_once(out, expected)
    out.write_text(full + "garbage\n" + full)  # damage in the middle is not a torn write: refuse
    with pytest.raises(BatchError, match="line 5 is damaged"):
        run_batch(attributor, src, out, progress=False)


def test_part_files_of_a_crashed_multiprocess_job_are_merged_on_resume(attributor, reference_run, tmp_path):
    """Ranks 0 and 1 of a 2-process job die mid-way (rank 1 mid-write); a 1-process run finishes the job."""
    src, expected = reference_run
    out = tmp_path / "out.jsonl"
    fp = job_fingerprint(attributor.name, attributor.options)
    records = scan_input(src, fp, attributor.options)
    parts_dir(out).mkdir()

    def stop_after(n):
        count = []

        def hook(rec):
            count.append(rec)
            if len(count) == n:
                raise RuntimeError("rank died")

        return hook

    for rank, n in ((0, 4), (1, 2)):
        with pytest.raises(RuntimeError):
            run_shard(
                attributor,
                src,
                records,
                set(),
                *part_paths(out, rank),
                rank=rank,
                world_size=2,
                job_fp=fp,
                base_options=attributor.options,
                progress=False,
                on_record=stop_after(n),
            )
    with open(part_paths(out, 1)[0], "a") as f:
        f.write('{"key": "torn", "li')
    assert [x["line"] for x in _lines(part_paths(out, 0)[0])] == [1, 3, 5, 7]
    summary = run_batch(attributor, src, out, progress=False)
    assert (summary.skipped, summary.new_results) == (6, 4) and not parts_dir(out).exists()
    _assert_exactly_once(out, expected)


def test_resuming_with_other_input_or_options_is_refused(attributor, reference_run, tmp_path):
    src, _ = reference_run
    out = tmp_path / "out.jsonl"
    run_batch(attributor, src, out, progress=False, on_record=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    other = Attributor(attributor.model, CharTokenizer(), options=OPTS.replace(seed=1), name="tiny-llama")
    with pytest.raises(BatchError, match="different input line or different options"):
        run_batch(other, src, out, progress=False)
    assert run_batch(other, src, out, progress=False, overwrite=True).new_results == 10


def test_batch_is_registered_with_the_main_cli():
    args = cli.build_parser().parse_args(["batch", "in.jsonl", "out.jsonl", "--preset", "fast", "--rank", "8"])
    assert args.func.__name__ == "batch_command" and args.rank == 8 and args.input == "in.jsonl"


def _cli(*extra):
    return [PY, "-m", "heta_fast.batch", *extra, "--tiny-model", "llama", "--num-probes", "2", "--quiet"]


def _env():
    # Subprocesses share this machine's cores with the test process: one thread each.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_sigkill_midway_then_resume(reference_run, tmp_path):
    src, expected = reference_run
    many = _write(tmp_path / "in.jsonl", _records(10))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_cli(str(many), str(out)), env=_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(read_results(out)))
    assert 3 <= n_before < 10, "the job should have been killed mid-way"
    res = subprocess.run(_cli(str(many), str(out)), env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"{10 - n_before} new" in res.stderr
    _assert_exactly_once(out, expected)


def test_two_process_gloo_run_matches_single_process(reference_run, tmp_path):
    src, expected = reference_run
    bad = _write(tmp_path / "in.jsonl", _records(10) + ["{oops", {"text": "abc", "target": 99}])
    out = tmp_path / "out.jsonl"
    cmd = [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        *_cli(str(bad), str(out))[2:],
    ]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_exactly_once(out, expected)
    assert [(e["line"], e["error"]) for e in _lines(errors_path(out))] == [
        (11, "MalformedRecord"),
        (12, "HetaInputError"),
    ]
    assert not parts_dir(out).exists()


def test_option_overrides_are_type_checked():
    from heta_fast.batch.records import parse_line

    def parsed(name, value):
        raw = json.dumps({"text": "abc", name: value}).encode()
        return parse_line(raw, 1, "job", HetaOptions())

    for ok in (("layers", "auto"), ("layers", None), ("layers", 3), ("window", None), ("beta", 1)):
        rec = parsed(*ok)
        assert rec.error is None and rec.overrides == {ok[0]: ok[1]}
    for bad in (("layers", "last"), ("layers", 2.5), ("num_probes", None), ("beta", "x")):
        rec = parsed(*bad)
        assert rec.error is not None and "bad option" in rec.error and bad[0] in rec.error
