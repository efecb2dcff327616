"""Crash-safe JSONL files: fsync'd one-line appends, an index that tolerates a torn last line, and an
atomic merge-and-sort of several files into one.

Every line is written with one ``write``, then flushed and fsync'd, so after a crash a file holds whole lines
plus at most one torn last line, which :func:`scan_jsonl` ignores (or cuts off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BatchError
from .records import record_key


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
                    key=record_key(obj.get("id"), obj["line"]),
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


def fsync_dir(path: Path) -> None:
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
        fsync_dir(target.parent)
    else:
        tmp.unlink()
    return new_index


def read_results(out: str | os.PathLike) -> Iterator[dict]:
    """The result lines of a finished (or interrupted) job, as dicts; a torn last line is skipped."""
    path = Path(out)
    entries = scan_jsonl(path)
    with open(path, "rb") if entries else open(os.devnull, "rb") as f:
        for e in entries:
            f.seek(e.offset)
            yield json.loads(f.read(e.length))
