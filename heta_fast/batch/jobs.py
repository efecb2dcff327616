"""Resumable dataset-scale attribution: JSONL in, one JSONL result line per input record out.

File layout for ``OUT = results.jsonl``:

- ``results.jsonl``: one line per finished record, in input order once the job ends
  (``{"key", "line", "id", "fingerprint", "meta"?, "result"}``);
- ``results.errors.jsonl``: one line per record that could not be explained
  (``{"key", "line", "id", "fingerprint", "error", "message"}``): malformed input lines, and records whose
  attribution raised a :class:`~heta_fast.errors.HetaInputError` (or another per-record HETA error);
- ``results.jsonl.parts/``: only while a multi-process job runs: each rank appends to its own
  ``rank-R.jsonl`` / ``rank-R.errors.jsonl``; rank 0 merges them into the two files above at the end.

Why it is restart-safe: every line is written with one ``write`` then flushed and fsync'd, so after a crash a
file holds whole lines plus at most one torn last line. A run always starts with :func:`consolidate`, which
drops a torn tail, folds leftover part files (from any earlier world size) into the final files and drops
duplicates, so every record is either finished (skipped) or redone exactly once. Each result carries a
fingerprint of its input line and of the job's options: resuming with a changed input or options is refused
instead of silently mixing results.

Identity of a record (its *key*): its ``"id"`` when the line has one, else its 1-based line number.
Sharding: the record on 0-based line index ``i`` belongs to rank ``i % world_size``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HetaError, HetaInputError, MemoryBudgetError, NumericalError
from ..options import HetaOptions

# Per-record errors that say "this record cannot be explained as given": recorded, the job goes on.
# Anything else (a bug, an out-of-memory, an unsupported model) stops the job unless keep_going is set.
RECORD_ERRORS = (HetaInputError, NumericalError, MemoryBudgetError)

RECORD_FIELDS = ("id", "text", "ids", "target", "generate", "meta")
# Per-record overrides: every HetaOptions field except the ones that only tune the machine, not the result.
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(HetaOptions) if f.name not in ("extra",))
# Fields that do not change the numbers, so a resumed job may change them (left out of the fingerprint).
_NOT_FINGERPRINTED = ("max_memory",)


class BatchError(HetaError):
    """The batch job cannot go on as asked (corrupt output, output from a different input, ...)."""


# ------------------------------------------------------------------------------------------ paths
def errors_path(out: str | os.PathLike) -> Path:
    """``results.jsonl`` -> ``results.errors.jsonl`` (any other name: ``NAME.errors.jsonl``)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".errors.jsonl")


def parts_dir(out: str | os.PathLike) -> Path:
    """Folder of the per-rank part files of a multi-process job."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def part_paths(out: str | os.PathLike, rank: int) -> tuple[Path, Path]:
    """(results part, errors part) of one rank."""
    d = parts_dir(out)
    return d / f"rank-{rank:05d}.jsonl", d / f"rank-{rank:05d}.errors.jsonl"


# ------------------------------------------------------------------------------------- fingerprint
def job_fingerprint(model_name: str, options: HetaOptions) -> str:
    """What every result of the job depends on besides its own input line."""
    opts = {k: v for k, v in options.to_dict().items() if k not in _NOT_FINGERPRINTED}
    return _sha({"model": model_name, "options": opts})


def _sha(obj: Any) -> str:
    blob = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _key_of(id_value, line: int) -> str:
    # Ids and line numbers live in separate name spaces, so id 3 never collides with line 3.
    return f"id:{json.dumps(id_value)}" if id_value is not None else f"line:{line}"


# ------------------------------------------------------------------------------------------ input
@dataclass
class InputRecord:
    """One input line, parsed and validated (``error`` set when it is malformed).

    Attributes:
        line: 1-based line number in the input file.
        id: the record's ``"id"`` (None when absent or when the line is malformed).
        key: identity used for resuming (``id:...`` or ``line:N``).
        fingerprint: hash of the line's content and the job's options.
        error: why the line is malformed (None when it is fine).
        source: text (str) or token ids (list of int).
    """

    line: int
    id: str | int | None
    key: str
    fingerprint: str
    error: str | None = None
    source: str | list[int] | None = None
    target: int | str | None = None
    generate: int | None = None
    overrides: dict = field(default_factory=dict)
    meta: Any = None

    @property
    def key_value(self) -> str | int:
        """The key as written to the output: the id, or the line number."""
        return self.id if self.id is not None else self.line


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_override(name: str, value) -> None:
    """Type checks HetaOptions leaves to the caller (a float num_probes would fail deep in torch).

    ``layers`` (a number, ``"auto"`` or None) is checked by HetaOptions itself.
    """
    ints = ("num_probes", "seed", "rank", "mask_token_id", "window", "max_memory")
    floats = ("beta", "gamma", "overlap")
    if name in ints and not (_is_int(value) or (value is None and name in ("mask_token_id", "window"))):
        raise HetaInputError(f"option {name!r} must be an integer, got {value!r}")
    if name in floats and not (_is_int(value) or isinstance(value, float)):
        raise HetaInputError(f"option {name!r} must be a number, got {value!r}")
    if name == "components" and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        raise HetaInputError(f'option \'components\' must be a list like ["M", "I"], got {value!r}')
    if name in ("rollout", "hessian", "curvature", "mask", "normalize", "engine") and not isinstance(value, str):
        raise HetaInputError(f"option {name!r} must be a string, got {value!r}")


def parse_line(raw: bytes, line: int, job_fp: str, base_options: HetaOptions) -> InputRecord | None:
    """Parse one input line; None for a blank line, an :class:`InputRecord` (maybe with ``error``) otherwise."""
    text = raw.rstrip(b"\r\n")
    if not text.strip():
        return None
    fp = _sha(text + b"\x00" + job_fp.encode())

    def bad(msg: str, id_value=None) -> InputRecord:
        return InputRecord(line=line, id=id_value, key=_key_of(id_value, line), fingerprint=fp, error=msg)

    try:
        obj = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        return bad(f"not UTF-8: {e}")
    except json.JSONDecodeError as e:
        return bad(f"not valid JSON: {e}")
    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None and not (isinstance(rid, str) or _is_int(rid)):
        return bad(f"'id' must be a string or an integer, got {rid!r}")
    unknown = sorted(set(obj) - set(RECORD_FIELDS) - set(OPTION_FIELDS))
    if unknown:
        return bad(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(RECORD_FIELDS)} "
            f'and the options {", ".join(OPTION_FIELDS)} (put free-form data under "meta")',
            rid,
        )
    has_text, has_ids = "text" in obj, "ids" in obj
    if has_text == has_ids:
        return bad('give exactly one of "text" or "ids"', rid)
    if has_text:
        source = obj["text"]
        if not isinstance(source, str) or not source.strip():
            return bad('"text" must be a non-empty string', rid)
    else:
        source = obj["ids"]
        if not isinstance(source, list) or not source or not all(_is_int(x) for x in source):
            return bad('"ids" must be a non-empty list of integer token ids', rid)
    target = obj.get("target")
    if target is not None and not (_is_int(target) or isinstance(target, str)):
        return bad(f'"target" must be an integer position or a continuation string, got {target!r}', rid)
    generate = obj.get("generate")
    if generate is not None and not (_is_int(generate) and generate >= 1):
        return bad(f'"generate" must be a positive integer, got {generate!r}', rid)
    if generate is not None and target is not None:
        return bad('give either "target" or "generate", not both', rid)
    overrides = {k: obj[k] for k in OPTION_FIELDS if k in obj}
    try:
        for k, v in overrides.items():
            _check_override(k, v)
        base_options.replace(**overrides)  # validates values now, so the job never dies on them later
    except (HetaInputError, TypeError, ValueError) as e:
        return bad(f"bad option: {e}", rid)
    return InputRecord(
        line=line,
        id=rid,
        key=_key_of(rid, line),
        fingerprint=fp,
        source=source,
        target=target,
        generate=generate,
        overrides=overrides,
        meta=obj.get("meta"),
    )


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    # Binary: a line with bad bytes is one malformed record, not a crash of the whole job.
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def scan_input(path: Path, job_fp: str, base_options: HetaOptions) -> list[InputRecord]:
    """Every non-blank input line as a light :class:`InputRecord` (payload dropped to save memory).

    A repeated id makes the later line malformed (keyed by its line number) so no key is ambiguous.
    """
    if not path.exists():
        raise BatchError(f"input file {path} does not exist")
    out: list[InputRecord] = []
    first_line: dict[str, int] = {}
    for lineno, raw in _iter_lines(path):
        rec = parse_line(raw, lineno, job_fp, base_options)
        if rec is None:
            continue
        if rec.key in first_line:
            rec = InputRecord(
                line=lineno,
                id=None,
                key=_key_of(None, lineno),
                fingerprint=rec.fingerprint,
                error=f"duplicate id {rec.id!r} (first on line {first_line[rec.key]})",
            )
        else:
            first_line[rec.key] = lineno
        out.append(dataclasses.replace(rec, source=None, overrides={}, meta=None))
    return out


# ----------------------------------------------------------------------------------------- output
@dataclass
class OutLine:
    """Where one finished record's line lives in a results or errors file."""

    key: str
    line: int
    fingerprint: str
    path: Path
    offset: int
    length: int


def scan_jsonl(path: Path, *, repair: bool = False) -> list[OutLine]:
    """Index a results/errors file; a torn last line (crash mid-write) is ignored, or cut off if ``repair``.

    Raises:
        BatchError: a damaged line that is not the last one (the file was not written by this tool).
    """
    if not path.exists():
        return []
    entries: list[OutLine] = []
    good_end = offset = 0
    damaged: tuple[int, Exception] | None = None  # a bad line is only acceptable as the very last one
    with open(path, "rb") as f:  # streamed: results files can be far larger than memory
        for idx, raw in enumerate(f):
            if damaged is not None:
                bad_idx, err = damaged
                raise BatchError(
                    f"{path}: line {bad_idx + 1} is damaged ({err}) and is not the last line; "
                    "this file was not written by heta-fast batch (remove it or choose another OUT)"
                )
            start, offset = offset, offset + len(raw)
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline at the end")
                obj = json.loads(raw)
                entry = OutLine(
                    key=_key_of(obj.get("id"), obj["line"]),
                    line=int(obj["line"]),
                    fingerprint=str(obj["fingerprint"]),
                    path=path,
                    offset=start,
                    length=len(raw),
                )
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                damaged = (idx, e)  # torn write after a crash, if nothing follows it
                continue
            entries.append(entry)
            good_end = offset
    if repair and good_end < offset:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return entries


class JsonlAppender:
    """Append-only JSONL writer: one ``write`` per line, flushed and fsync'd, so a crash tears at most one line."""

    def __init__(self, path: Path, fsync: bool = True):
        self.path = path
        self.fsync = fsync
        self._f = None

    def write(self, obj: dict) -> None:
        if self._f is None:  # opened lazily: a job with no errors leaves no errors file behind
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")  # noqa: SIM115 (kept open across writes; closed in close())
        self._f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rewrite_sorted(
    target: Path,
    sources: list[Path],
    drop: set[str] = frozenset(),
    *,
    also_drop: Callable[[OutLine], bool] | None = None,
) -> list[OutLine]:
    """Write ``target`` = the lines of ``sources`` (``target`` first), one per key, sorted by input line.

    Streams byte ranges (never holds results in memory). Atomic: a temporary file is fsync'd and renamed over
    ``target``, so a crash leaves either the old or the new file (and the sources, still mergeable).
    Returns the index of the new file. Does nothing when ``target`` is already in that form.
    """
    all_sources = [target] + [s for s in sources if s != target]
    seen: set[str] = set()
    kept: list[OutLine] = []
    changed = False
    for src in all_sources:
        # The target may be appended to afterwards, so its torn tail is cut off; sources are only read.
        for e in scan_jsonl(src, repair=src == target):
            if e.key in seen or e.key in drop or (also_drop is not None and also_drop(e)):
                changed = True
                continue
            seen.add(e.key)
            kept.append(e)
            if src != target:
                changed = True
    order = sorted(range(len(kept)), key=lambda i: (kept[i].line, i))
    if order != list(range(len(kept))):
        changed = True
    if not changed:
        return kept
    tmp = target.with_name(target.name + ".tmp")
    new_index: list[OutLine] = []
    with contextlib.ExitStack() as stack, open(tmp, "wb") as out:
        handles = {p: stack.enter_context(open(p, "rb")) for p in {e.path for e in kept}}
        pos = 0
        for i in order:
            e = kept[i]
            fh = handles[e.path]
            fh.seek(e.offset)
            out.write(fh.read(e.length))
            new_index.append(dataclasses.replace(e, path=target, offset=pos))
            pos += e.length
        out.flush()
        os.fsync(out.fileno())
    if new_index or target.exists():
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    else:
        tmp.unlink()
    return new_index


# ------------------------------------------------------------------------------------------- phases
def consolidate(out: Path, records: list[InputRecord], *, retry_errors: bool = False) -> None:
    """Bring OUT and its errors file into a clean state before (re)starting: run on one process only.

    Folds leftover part files into the final files, drops torn tails and duplicate keys, drops error lines
    that will be retried (all with ``retry_errors``, and those whose input line changed), and refuses to go on
    when a finished result no longer matches its input line or the job's options.
    """
    by_key = {r.key: r for r in records}
    pdir = parts_dir(out)
    res_parts = sorted(pdir.glob("rank-*[0-9].jsonl")) if pdir.is_dir() else []
    err_parts = sorted(pdir.glob("rank-*.errors.jsonl")) if pdir.is_dir() else []
    index = rewrite_sorted(out, res_parts)
    for e in index:
        rec = by_key.get(e.key)
        if rec is not None and rec.fingerprint != e.fingerprint:
            what = f"id {rec.id!r}" if rec.id is not None else f"line {rec.line}"
            raise BatchError(
                f"{out} holds a result for {what} computed from a different input line or different options "
                f"(model, preset, seed, ...); resume with the same input and options, write to a new OUT, "
                "or pass --overwrite to start again"
            )
    done = {e.key for e in index}

    def stale(e: OutLine) -> bool:  # an error that must be redone (or is superseded by a result)
        rec = by_key.get(e.key)
        return e.key in done or retry_errors or (rec is not None and rec.fingerprint != e.fingerprint)

    rewrite_sorted(errors_path(out), err_parts, also_drop=stale)
    if pdir.is_dir():
        shutil.rmtree(pdir)
        _fsync_dir(out.parent)


def finished_keys(out: Path) -> set[str]:
    """Keys already in OUT or its errors file (read-only; torn tails are ignored)."""
    return {e.key for e in scan_jsonl(out)} | {e.key for e in scan_jsonl(errors_path(out))}


def finalize(out: Path) -> tuple[int, int]:
    """Merge part files into OUT / errors in input order (one process only); returns (results, errors)."""
    pdir = parts_dir(out)
    res_parts = sorted(pdir.glob("rank-*[0-9].jsonl")) if pdir.is_dir() else []
    err_parts = sorted(pdir.glob("rank-*.errors.jsonl")) if pdir.is_dir() else []
    n_res = len(rewrite_sorted(out, res_parts))
    n_err = len(rewrite_sorted(errors_path(out), err_parts)) if (err_parts or errors_path(out).exists()) else 0
    if pdir.is_dir():
        shutil.rmtree(pdir)  # only after both merged files are safely renamed into place
        _fsync_dir(out.parent)
    return n_res, n_err


def remove_outputs(out: Path) -> None:
    """``--overwrite``: forget every earlier result of this OUT."""
    for p in (out, errors_path(out)):
        if p.exists():
            p.unlink()
    if parts_dir(out).is_dir():
        shutil.rmtree(parts_dir(out))


# ------------------------------------------------------------------------------------------ running
@dataclass
class ShardSummary:
    """What one rank did in one run."""

    assigned: int = 0  # records of this rank not finished before this run
    done: int = 0
    errors: int = 0


def run_shard(
    attributor,
    in_path: Path,
    records: list[InputRecord],
    finished: set[str],
    results_file: Path,
    errors_file: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    job_fp: str,
    base_options: HetaOptions,
    keep_going: bool = False,
    progress: bool = True,
    fsync: bool = True,
    on_record: Callable[[InputRecord], None] | None = None,
) -> ShardSummary:
    """Explain this rank's unfinished records (line index ``i`` with ``i % world_size == rank``), in order.

    Each result or error is appended to ``results_file`` / ``errors_file`` the moment it is known.
    ``on_record`` is called after each record is written (tests use it to inject a crash).
    """
    from tqdm.auto import tqdm

    mine = {r.line: r for r in records if (r.line - 1) % world_size == rank and r.key not in finished}
    summary = ShardSummary(assigned=len(mine))
    out_w, err_w = JsonlAppender(results_file, fsync), JsonlAppender(errors_file, fsync)
    desc = "heta-fast batch" if world_size == 1 else f"heta-fast batch (rank 0 of {world_size}, its shard)"
    bar = tqdm(total=len(mine), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)
    try:
        for lineno, raw in _iter_lines(in_path):
            light = mine.get(lineno)
            if light is None:
                continue
            rec = light if light.error else parse_line(raw, lineno, job_fp, base_options)
            if rec is None or rec.key != light.key or rec.fingerprint != light.fingerprint:
                raise BatchError(f"{in_path} changed while the job was running (line {lineno})")
            head = {"key": rec.key_value, "line": rec.line, "id": rec.id, "fingerprint": rec.fingerprint}
            if rec.error:
                err_w.write({**head, "error": "MalformedRecord", "message": rec.error})
                summary.errors += 1
            else:
                try:
                    res = attributor.attribute(rec.source, rec.target, generate=rec.generate, **rec.overrides)
                except RECORD_ERRORS as e:
                    err_w.write({**head, "error": type(e).__name__, "message": str(e)})
                    summary.errors += 1
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:
                    if not keep_going:
                        raise BatchError(
                            f"line {rec.line} (key {rec.key_value!r}) failed with {type(e).__name__}: "
                            f"{e}; fix it and run again (finished records are kept), or pass "
                            "--keep-going to record such failures and go on"
                        ) from e
                    tb = traceback.format_exception_only(type(e), e)[-1].strip()
                    err_w.write({**head, "error": type(e).__name__, "message": tb})
                    summary.errors += 1
                else:
                    line = {**head, "result": res.to_dict()}
                    if rec.meta is not None:
                        line["meta"] = rec.meta
                    out_w.write(line)
                    summary.done += 1
            bar.update(1)
            if summary.errors:
                bar.set_postfix(errors=summary.errors, refresh=False)
            if on_record is not None:
                on_record(rec)
    finally:
        bar.close()
        out_w.close()
        err_w.close()
    return summary


def read_results(out: str | os.PathLike) -> Iterator[dict]:
    """The result lines of a finished (or interrupted) job, as dicts; a torn last line is skipped."""
    path = Path(out)
    entries = scan_jsonl(path)
    with open(path, "rb") if entries else open(os.devnull, "rb") as f:
        for e in entries:
            f.seek(e.offset)
            yield json.loads(f.read(e.length))


def warn(msg: str) -> None:
    print(f"heta-fast batch: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------- the job
@dataclass
class BatchSummary:
    """Outcome of :func:`run_batch` (the same on every rank).

    Attributes:
        results, errors: lines in OUT and in its errors file after this run (all runs together).
        new_results, new_errors: what this run added (all ranks together).
        skipped: records found finished by an earlier run.
        interrupted: the run stopped early (Ctrl-C); run it again to resume.
    """

    results: int = 0
    errors: int = 0
    new_results: int = 0
    new_errors: int = 0
    skipped: int = 0
    interrupted: bool = False


def _agree(ctx, fn: Callable[[], Any], *, main_only: bool) -> Any:
    """Run ``fn`` (on rank 0 only, or on every rank) and fail on every rank if it failed on any.

    Without this, a rank that raised would leave the others waiting at the next barrier.
    """
    value, failure = None, None
    if ctx.is_main or not main_only:
        try:
            value = fn()
        except Exception as e:
            failure = e
    n_failed = ctx.all_sum([int(failure is not None)])[0]
    if main_only:
        msg = ctx.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if msg is not None:
            raise BatchError(f"rank 0 failed: {msg}")
        return value
    if failure is not None:
        raise failure
    if n_failed:
        raise BatchError(f"{n_failed} other rank(s) failed; see their messages")
    return value


def run_batch(
    attributor,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    ctx=None,
    retry_errors: bool = False,
    overwrite: bool = False,
    keep_going: bool = False,
    progress: bool = True,
    fsync: bool = True,
    on_record: Callable[[InputRecord], None] | None = None,
) -> BatchSummary:
    """Explain every record of ``in_path`` into ``out_path`` (resumable; see the module docstring).

    Args:
        attributor: an :class:`~heta_fast.Attributor`, or ``factory(device) -> Attributor`` (called once per
            process; rank 0 loads first so a first-use model conversion is not raced).
        in_path: JSONL input, one record per line (``{"id"?, "text" | "ids", "target"?, "generate"?,
            option overrides?, "meta"?}``).
        out_path: JSONL output; ``<stem>.errors.jsonl`` beside it receives the records that failed.
        ctx: a :class:`~heta_fast.batch.distributed.DistContext`; default: from torchrun's environment.
        retry_errors: redo the records listed in the errors file (they are removed from it first).
        overwrite: discard earlier results of ``out_path`` and start again.
        keep_going: record unexpected per-record exceptions in the errors file instead of stopping.
        progress: tqdm bar with ETA on rank 0.
        fsync: fsync after every line (the default; turning it off trades crash safety for speed).
        on_record: called after each record is written (tests inject crashes with it).

    Returns:
        BatchSummary (also on the other ranks).
    """
    from .distributed import setup

    own_ctx = ctx is None
    ctx = setup() if own_ctx else ctx
    in_path, out_path = Path(in_path), Path(out_path)
    try:
        if callable(attributor) and not hasattr(attributor, "attribute"):
            factory = attributor
            attributor = None
            # Stagger loading: rank 0, then the first rank of every other machine, then the rest.
            for stage in range(3):
                mine = {0: ctx.rank == 0, 1: ctx.rank != 0 and ctx.local_rank == 0, 2: ctx.local_rank != 0}[stage]
                if mine:
                    attributor = _agree(ctx, lambda: factory(ctx.device), main_only=False)
                else:
                    _agree(ctx, lambda: None, main_only=False)
        job_fp = job_fingerprint(attributor.name, attributor.options)
        records = _agree(ctx, lambda: scan_input(in_path, job_fp, attributor.options), main_only=False)

        def prepare():
            if overwrite:
                remove_outputs(out_path)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            consolidate(out_path, records, retry_errors=retry_errors)
            if ctx.distributed:  # every rank must see this folder: part files are merged through it
                parts_dir(out_path).mkdir()
                token = _sha(os.urandom(16))
                (parts_dir(out_path) / f".job-{token}").touch()
                return token
            return None

        token = _agree(ctx, prepare, main_only=True)
        if token is not None and not (parts_dir(out_path) / f".job-{token}").exists():
            raise BatchError(
                f"rank {ctx.rank} cannot see {parts_dir(out_path)}: with several machines, OUT must be "
                "on a file system they all share"
            )
        finished = finished_keys(out_path)
        skipped = sum(1 for r in records if r.key in finished)
        res_file, err_file = (
            (out_path, errors_path(out_path)) if not ctx.distributed else part_paths(out_path, ctx.rank)
        )
        interrupted = False
        try:
            shard = run_shard(
                attributor,
                in_path,
                records,
                finished,
                res_file,
                err_file,
                rank=ctx.rank,
                world_size=ctx.world_size,
                job_fp=job_fp,
                base_options=attributor.options,
                keep_going=keep_going,
                progress=progress and ctx.is_main,
                fsync=fsync,
                on_record=on_record,
            )
        except KeyboardInterrupt:
            if ctx.distributed:
                raise  # the other ranks are still running; the next run folds this rank's part file in
            interrupted, shard = True, ShardSummary()
        new = ctx.all_sum([shard.done, shard.errors])
        counts = _agree(ctx, lambda: finalize(out_path), main_only=True) if not interrupted else (0, 0)
        counts = ctx.broadcast(counts)
        return BatchSummary(
            results=counts[0],
            errors=counts[1],
            new_results=new[0],
            new_errors=new[1],
            skipped=skipped,
            interrupted=interrupted,
        )
    finally:
        if own_ctx:
            ctx.close()
