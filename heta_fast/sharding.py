"""One attribution's work split across processes (torchrun: gloo on CPUs, NCCL on GPUs), for documents that
outgrow one machine's time.

Every rank runs the same call on the same input. The independent pieces of work are dealt out and their results
summed over the ranks, so every rank ends with the whole result, equal to one process's:

- I: the chunks of masks (each chunk masked suffixes behind one clean prefix, which every rank computes for itself)
  go to the ranks by longest-processing-time first (a chunk costs its masks times its suffix rows);
- S, exact: the chunks of (unit, probe) directions, the same way;
- S, low rank: the range finder's batches of directions (``Y = C Ω`` and, with two passes, ``C Q``); the QR and the
  small matrices are computed on every rank from the same summed numbers.

A rank's share of a tensor is computed exactly as one process computes it (same chunks, same batches), and every
other rank adds zeros, so the sum is the one-process result. The gate M is cheap and runs on every rank.

    torchrun --nproc-per-node 2 -m heta_fast attribute "..." --preset document --split-work
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Shard:
    """This process's place in a split attribution: ``rank`` of ``world_size`` in the default process group."""

    rank: int
    world_size: int

    @classmethod
    def from_process_group(cls) -> Shard:
        """The shard of this process in the initialised default process group."""
        import torch.distributed as dist

        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def mine(self, costs: list[float]) -> list[bool]:
        """Which of the pieces with these costs this rank computes: longest first, each to the least-loaded rank
        (ties to the lowest rank), the same deal on every rank."""
        loads = [0.0] * self.world_size
        owner = [0] * len(costs)
        for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
            r = min(range(self.world_size), key=lambda r: (loads[r], r))
            owner[j] = r
            loads[r] += costs[j]
        return [o == self.rank for o in owner]

    def sum(self, x: Tensor) -> Tensor:
        """``x`` summed over the ranks (each holds its pieces and zeros elsewhere), on every rank."""
        import torch.distributed as dist

        out = x.contiguous().clone()
        if out.device.type == "cpu" and dist.get_backend() == "nccl":
            raise RuntimeError("an NCCL process group cannot sum CPU tensors; run the model on the GPU")
        dist.all_reduce(out)
        return out


def summed(shard: Shard | None, x: Tensor) -> Tensor:
    """``x`` as one process would have it: itself without a shard, else its sum over the ranks."""
    return x if shard is None or shard.world_size == 1 else shard.sum(x)


def mine(shard: Shard | None, costs: list[float]) -> list[bool]:
    """Every piece without a shard, else this rank's share (:meth:`Shard.mine`)."""
    return [True] * len(costs) if shard is None or shard.world_size == 1 else shard.mine(costs)


__all__ = ["Shard", "mine", "summed"]
