"""Input records of a batch job: parsing and validating one JSONL line, its key and its fingerprint.

Identity of a record (its *key*): its ``"id"`` when the line has one, else its 1-based line number.
Each record carries a fingerprint of its input line and of the job's model and options, so a resumed job can
tell whether a finished result still belongs to its line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BatchError, HetaInputError
from ..options import OPTION_NAMES, OPTION_SPECS, HetaOptions, is_integer
from ..tokenizers import check_text

RECORD_FIELDS = ("id", "text", "ids", "target", "generate", "meta")
# Options that do not change the numbers, so a resumed job may change them (left out of the fingerprint).
NOT_FINGERPRINTED = tuple(s.name for s in OPTION_SPECS if not s.affects_result)


def job_fingerprint(model_name: str, options: HetaOptions) -> str:
    """What every result of the job depends on besides its own input line."""
    opts = {k: v for k, v in options.to_dict().items() if k not in NOT_FINGERPRINTED}
    return digest({"model": model_name, "options": opts})


def digest(obj: Any) -> str:
    """A short hash of bytes, or of a JSON-able object (keys sorted)."""
    blob = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def record_key(id_value, line: int) -> str:
    # Ids and line numbers live in separate name spaces, so id 3 never collides with line 3.
    return f"id:{json.dumps(id_value)}" if id_value is not None else f"line:{line}"


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


def parse_line(raw: bytes, line: int, job_fp: str, base_options: HetaOptions) -> InputRecord | None:
    """Parse one input line; None for a blank line, an :class:`InputRecord` (maybe with ``error``) otherwise."""
    text = raw.rstrip(b"\r\n")
    if not text.strip():
        return None
    fp = digest(text + b"\x00" + job_fp.encode())

    def bad(msg: str, id_value=None) -> InputRecord:
        return InputRecord(line=line, id=id_value, key=record_key(id_value, line), fingerprint=fp, error=msg)

    try:
        obj = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        return bad(f"not UTF-8: {e}")
    except json.JSONDecodeError as e:
        return bad(f"not valid JSON: {e}")
    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None and not (isinstance(rid, str) or is_integer(rid)):
        return bad(f"'id' must be a string or an integer, got {rid!r}")
    unknown = sorted(set(obj) - set(RECORD_FIELDS) - set(OPTION_NAMES))
    if unknown:
        return bad(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(RECORD_FIELDS)} "
            f'and the options {", ".join(OPTION_NAMES)} (put free-form data under "meta")',
            rid,
        )
    has_text, has_ids = "text" in obj, "ids" in obj
    if has_text == has_ids:
        return bad('give exactly one of "text" or "ids"', rid)
    if has_text:
        source = obj["text"]
        if not isinstance(source, str) or not source.strip():
            return bad('"text" must be a non-empty string', rid)
        try:
            check_text(source)
        except HetaInputError as e:
            return bad(str(e), rid)
    else:
        source = obj["ids"]
        if not isinstance(source, list) or not source or not all(is_integer(x) for x in source):
            return bad('"ids" must be a non-empty list of integer token ids', rid)
    target = obj.get("target")
    if target is not None and not (is_integer(target) or isinstance(target, str)):
        return bad(f'"target" must be an integer position or a continuation string, got {target!r}', rid)
    if isinstance(target, str):
        try:
            check_text(target, "target")
        except HetaInputError as e:
            return bad(str(e), rid)
    generate = obj.get("generate")
    if generate is not None and not (is_integer(generate) and generate >= 1):
        return bad(f'"generate" must be a positive integer, got {generate!r}', rid)
    if generate is not None and target is not None:
        return bad('give either "target" or "generate", not both', rid)
    overrides = {k: obj[k] for k in OPTION_NAMES if k in obj}
    try:
        base_options.replace(**overrides)  # types, ranges and finiteness now, so the job never dies on them later
    except HetaInputError as e:
        return bad(f"bad option: {e}", rid)
    return InputRecord(
        line=line,
        id=rid,
        key=record_key(rid, line),
        fingerprint=fp,
        source=source,
        target=target,
        generate=generate,
        overrides=overrides,
        meta=obj.get("meta"),
    )


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
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
    for lineno, raw in iter_lines(path):
        rec = parse_line(raw, lineno, job_fp, base_options)
        if rec is None:
            continue
        if rec.key in first_line:
            rec = InputRecord(
                line=lineno,
                id=None,
                key=record_key(None, lineno),
                fingerprint=rec.fingerprint,
                error=f"duplicate id {rec.id!r} (first on line {first_line[rec.key]})",
            )
        else:
            first_line[rec.key] = lineno
        out.append(dataclasses.replace(rec, source=None, overrides={}, meta=None))
    return out
