"""torch.distributed glue for batch jobs: ranks from ``torchrun``'s environment, one device per rank.

A job is launched either as one plain process (world size 1, no process group), by ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), or
programmatically with an explicit rank, world size and ``init_method`` (tests spawn processes that meet
through a ``file://`` rendezvous). Ranks only need barriers and small broadcasts: results travel through
files, which is also what makes the job resumable.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BatchError


@dataclass
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: the same on this machine (``LOCAL_RANK`` picks the GPU).
        device: ``cuda:LOCAL_RANK`` when CUDA is available (unless a device was forced), else ``cpu``.
        owns_group: True when this context created the process group (and so destroys it in ``close``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled; small objects only)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sum of small integer counters over all ranks."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.long, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return [int(x) for x in t.tolist()]

    def close(self) -> None:
        """Leave the job: destroy the process group this context created, once every rank is ready to."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                _meet_before_teardown(self.rank, self.world_size)
                dist.destroy_process_group()
                # Free the backend now, while the interpreter is whole: a finished collective's work object in
                # a reference cycle would otherwise keep gloo's threads alive until interpreter shutdown, where
                # releasing its tensors aborts the process (SIGABRT after a successful job).
                gc.collect()
            self.owns_group = False


def _meet_before_teardown(rank: int, world_size: int) -> None:
    """Return on every rank only when no rank can still be inside a collective.

    A collective barrier cannot do this: a gloo rank that leaves the last barrier (or broadcast) first and
    destroys its group closes the sockets a slower peer is still completing it on, and that peer aborts
    ("terminate called without an active exception"). So the ranks meet through the rendezvous store
    instead, which is not torn down with the group: each says it has left every collective, waits for all
    the others, and only then may anyone close its sockets. Rank 0 goes last, because under a ``tcp://``
    rendezvous it hosts the store the others are still reading.
    """
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    # One key space per process group: a later group on the same store (a second job) starts afresh.
    prefix = f"heta_fast/teardown/{dist.distributed_c10d._world.group_count}"
    store.set(f"{prefix}/arrived/{rank}", b"1")
    store.wait([f"{prefix}/arrived/{r}" for r in range(world_size)])
    if rank != 0:
        store.set(f"{prefix}/left/{rank}", b"1")  # the last this rank asks of the store
    else:
        store.wait([f"{prefix}/left/{r}" for r in range(1, world_size)])


def _pick_device(local_rank: int, device: str | None) -> torch.device:
    if device not in (None, "auto"):
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)  # "--device cuda" on several GPUs: one GPU per rank
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def setup(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    init_method: str | None = None,
    device: str | None = None,
    backend: str | None = None,
    timeout_minutes: float = 7 * 24 * 60,
) -> DistContext:
    """Join (or create) the process group and pick this rank's device.

    Without arguments the rank comes from ``torchrun``'s environment (world size 1 when it is absent, and
    then no process group is created at all).

    Args:
        rank, world_size, local_rank: explicit placement (e.g. from ``torch.multiprocessing.spawn``).
        init_method: rendezvous URL (``file:///tmp/x``, ``tcp://host:port``); default ``env://``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None/"auto" (``cuda:LOCAL_RANK`` when available).
        backend: ``"nccl"`` or ``"gloo"``; default nccl on CUDA, gloo on the CPU.
        timeout_minutes: how long a barrier waits. Long by default, because ranks finish their shards at
            different times and rank 0 waits for the slowest before it merges.

    Returns:
        DistContext: call ``close()`` at the end.
    """
    env = os.environ
    world = int(world_size if world_size is not None else env.get("WORLD_SIZE", 1))
    rnk = int(rank if rank is not None else env.get("RANK", 0))
    lrank = int(local_rank if local_rank is not None else env.get("LOCAL_RANK", rnk))
    lworld = int(env.get("LOCAL_WORLD_SIZE", world))
    if not 0 <= rnk < world:
        raise ValueError(f"rank {rnk} is outside world size {world}")
    dev = _pick_device(lrank, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif world > 1 and "OMP_NUM_THREADS" not in env:
        # CPU ranks on one machine would otherwise each start one thread per core and thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, lworld)))
    ctx = DistContext(rank=rnk, world_size=world, local_rank=lrank, local_world_size=lworld, device=dev)
    if world == 1:
        return ctx
    import torch.distributed as dist

    if dist.is_initialized():  # the caller's own script already set it up: use it, leave it alone
        if dist.get_world_size() != world or dist.get_rank() != rnk:
            raise ValueError("the existing process group does not match the requested rank/world size")
        return ctx
    be = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kw = {"device_id": dev} if be == "nccl" else {}
    dist.init_process_group(
        be,
        init_method=init_method or "env://",
        rank=rnk,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_minutes),
        **kw,
    )
    ctx.owns_group = True
    return ctx


def agree(ctx, fn: Callable[[], Any], *, main_only: bool) -> Any:
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
