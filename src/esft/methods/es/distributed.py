"""Members sharded over torch.distributed ranks; ranks exchange only (fitness, tokens) scalars.

Every rank holds the same θ and regenerates any member's noise from its key, so after the all_gather
each rank applies the same update and all ranks stay bit-identical to a single-process run. Launch
under torchrun: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from esft.methods.es.modes import Evaluator

T = TypeVar("T")


def init_distributed(device: str) -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL for CUDA devices, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes outputs."""
    return not dist.is_initialized() or dist.get_rank() == 0


def from_main(obj: T | None) -> T:
    """Rank 0's `obj` on every rank (`obj` itself in one process). What one rank draws and all must share
    goes through here: LBES's sampled completions, which the ranks would otherwise draw and filter each on
    their own (sampling kernels are not bitwise across GPUs), while only rank 0's are logged."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(members: Sequence[int], rank: int, world: int) -> list[int]:
    """Contiguous block of `members` for `rank`; block sizes differ by at most one."""
    base, extra = divmod(len(members), world)
    start = rank * base + min(rank, extra)
    return list(members[start:start + base + (rank < extra)])


class ShardedEvaluator:
    """Evaluates this rank's block with `local`, then all_gathers every member's scalars in member order."""

    def __init__(self, local: Evaluator, group: dist.ProcessGroup | None = None) -> None:
        self.local = local
        self.group = group

    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        members = list(members)
        if not dist.is_initialized() or dist.get_world_size(self.group) == 1:
            return self.local(iteration, members, sigma, indices)
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        mine = self.local(iteration, shard(members, rank, world), sigma, indices)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" \
            else torch.device("cpu")
        width = -(-len(members) // world)
        # float64 carries a Python float exactly, and token counts (< 2**53) too
        local = torch.zeros((width, 2), dtype=torch.float64, device=device)
        for row, (value, tokens) in enumerate(mine):
            local[row, 0], local[row, 1] = value, tokens
        blocks = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(blocks, local, group=self.group)
        results = []
        for r, block in enumerate(blocks):
            for value, tokens in block[:len(shard(members, r, world))].tolist():
                results.append((value, int(tokens)))
        return results
