"""One rank's share of a batch job: explain its unfinished records in input order, appending each result
(or error) the moment it is known.

Sharding: the record on 0-based line index ``i`` belongs to rank ``i % world_size``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BatchError, HetaInputError, MemoryBudgetError, NumericalError
from ..options import HetaOptions
from .jsonl import JsonlAppender
from .records import InputRecord, iter_lines, parse_line

# Per-record errors that say "this record cannot be explained as given": recorded, the job goes on.
# Anything else (a bug, an out-of-memory, an unsupported model) stops the job unless keep_going is set.
RECORD_ERRORS = (HetaInputError, NumericalError, MemoryBudgetError)


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
        for lineno, raw in iter_lines(in_path):
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
