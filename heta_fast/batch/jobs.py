"""Resumable dataset-scale attribution: JSONL in, one JSONL result line per input record out.

:func:`run_batch` runs the phases of a job on every rank: load the model (staggered), scan the input
(:mod:`.records`), bring the output into a clean state (:mod:`.outputs`, rank 0), explain this rank's shard
(:mod:`.shard`, appending to crash-safe files, :mod:`.jsonl`) and merge the shards (rank 0). Ranks stay in
step through :func:`~heta_fast.batch.distributed.agree`. The file layout and why a job is restart-safe:
:mod:`.outputs`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BatchError
from .distributed import agree
from .jsonl import read_results
from .outputs import consolidate, errors_path, finalize, finished_keys, part_paths, parts_dir, remove_outputs
from .records import InputRecord, digest, job_fingerprint, scan_input
from .shard import ShardSummary, run_shard

__all__ = ["BatchError", "BatchSummary", "errors_path", "parts_dir", "read_results", "run_batch"]


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
                    attributor = agree(ctx, lambda: factory(ctx.device), main_only=False)
                else:
                    agree(ctx, lambda: None, main_only=False)
        job_fp = job_fingerprint(attributor.name, attributor.options)
        records = agree(ctx, lambda: scan_input(in_path, job_fp, attributor.options), main_only=False)

        def prepare():
            if overwrite:
                remove_outputs(out_path)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            consolidate(out_path, records, retry_errors=retry_errors)
            if ctx.distributed:  # every rank must see this folder: part files are merged through it
                parts_dir(out_path).mkdir()
                token = digest(os.urandom(16))
                (parts_dir(out_path) / f".job-{token}").touch()
                return token
            return None

        token = agree(ctx, prepare, main_only=True)
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
        counts = agree(ctx, lambda: finalize(out_path), main_only=True) if not interrupted else (0, 0)
        counts = ctx.broadcast(counts)
        # Every rank waits here so that none destroys the process group while a peer is still inside the
        # broadcast above: gloo aborts the peer ("terminate called without an active exception").
        ctx.barrier()
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
