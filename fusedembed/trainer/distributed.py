"""torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_type: str) -> World:
    """Joins the process group torchrun describes (NCCL on CUDA, gloo on CPU); alone, World()."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return world


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= world.size
    return t


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


@torch.no_grad()
def param_divergence(module: torch.nn.Module, world: World) -> float:
    """Largest absolute difference of any parameter from rank 0's copy (0 when in sync)."""
    if not world.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
