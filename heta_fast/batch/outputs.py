"""The output files of a batch job: where they live, and bringing them into a clean state.

File layout for ``OUT = results.jsonl``:

- ``results.jsonl``: one line per finished record, in input order once the job ends
  (``{"key", "line", "id", "fingerprint", "meta"?, "result"}``);
- ``results.errors.jsonl``: one line per record that could not be explained
  (``{"key", "line", "id", "fingerprint", "error", "message"}``): malformed input lines, and records whose
  attribution raised a :class:`~heta_fast.errors.HetaInputError` (or another per-record HETA error);
- ``results.jsonl.parts/``: only while a multi-process job runs: each rank appends to its own
  ``rank-R.jsonl`` / ``rank-R.errors.jsonl``; rank 0 merges them into the two files above at the end.

A run always starts with :func:`consolidate`, which drops a torn tail, folds leftover part files (from any
earlier world size) into the final files and drops duplicates, so every record is either finished (skipped)
or redone exactly once; resuming with a changed input or options is refused instead of silently mixing results.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import BatchError
from .jsonl import OutLine, fsync_dir, rewrite_sorted, scan_jsonl
from .records import InputRecord


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
        fsync_dir(out.parent)


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
        fsync_dir(out.parent)
    return n_res, n_err


def remove_outputs(out: Path) -> None:
    """``--overwrite``: forget every earlier result of this OUT."""
    for p in (out, errors_path(out)):
        if p.exists():
            p.unlink()
    if parts_dir(out).is_dir():
        shutil.rmtree(parts_dir(out))
