"""torch.distributed for dataset runs: one process per rank, as started by ``torchrun``.

The process group is set up from the environment torchrun provides (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the run uses CUDA, gloo on CPU. Only
small Python objects (hashes, records, counters) are exchanged, over a gloo group in both cases.
Without ``WORLD_SIZE`` > 1 every collective is the identity on the single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import PyExplainError

T = TypeVar("T")

#: How long a rank waits at a collective for slower ranks (they finish their last batches meanwhile).
TIMEOUT = timedelta(hours=6)


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment; ``(0, 1, 0)`` outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise PyExplainError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world > 1 and "RANK" not in os.environ:
        raise PyExplainError("WORLD_SIZE is set but RANK is not; start distributed runs with torchrun")
    if not 0 <= rank < max(world, 1):
        raise PyExplainError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, max(world, 1), local


def rank_device(device: str, local_rank: int, world: int) -> str:
    """The device of this rank: plain ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run."""
    return f"cuda:{local_rank}" if device == "cuda" and world > 1 else device


@dataclass
class Ranks:
    """This process's place in the run and the collectives the run needs."""

    rank: int = 0
    world: int = 1
    group: Any = None
    owns_group: bool = False

    @classmethod
    def start(cls, device: str) -> "Ranks":
        rank, world, local = env_world()
        if world == 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
        group = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
        return cls(dist.get_rank(), dist.get_world_size(), group, owns)

    def all_gather(self, value: T) -> list[T]:
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` on rank 0 (``None`` elsewhere)."""
        if self.world == 1:
            return [value]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, out, dst=0, group=self.group)
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank`` (disjoint, together exactly ``items``)."""
    return list(items[rank::world])
