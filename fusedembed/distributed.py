"""torch.distributed for the trainer and for plugin losses, so N processes train like one.

The trainer joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK; NCCL on
CUDA, gloo on CPU). Losses that compare items across the batch (in-batch negatives, distance
weighted sampling, a B x B score matrix) call :func:`all_gather_with_grad` to see the global
batch; counters and running statistics kept in a loss's buffers are made identical on every
rank with :func:`reduce_state_` before they are saved. Every function is the identity in a
single process, so plugin code is written once.
"""

import datetime
import os
from dataclasses import dataclass
from typing import List

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


def world() -> World:
    """This process's place in the initialised process group (``World()`` when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str, timeout_s: float = 1800.0) -> World:
    """Joins the process group torchrun describes (NCCL on CUDA, gloo on CPU); alone, World().
    A collective that waits more than ``timeout_s`` (a stalled or dead rank) raises instead
    of hanging; the error names the rank and the collective."""
    if not timeout_s > 0:
        raise ValueError(f"trainer.dist_timeout_s must be > 0, got {timeout_s}")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    w = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return w


def shutdown(w: World) -> None:
    if w.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: the ranks' tensors concatenated along dim 0. Backward: each rank's slice of the
    summed gradient (every rank's loss may use every rank's rows) goes back to its owner."""

    @staticmethod
    def forward(ctx, x):
        sizes = _sizes(x)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return _gather(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]]


def _sizes(x: torch.Tensor) -> List[int]:
    n = torch.tensor([x.shape[0]], device=x.device)
    out = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(out, n)
    return [int(s) for s in out]


def _gather(x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    x = x.contiguous()
    most = max(sizes)
    padded = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch: every rank's ``x`` concatenated along dim 0 in rank order (ranks may
    hold different numbers of rows), differentiable: gradients reach the rank that owns each
    row. ``x`` itself when not distributed."""
    return _GatherWithGrad.apply(x) if _active() else x


@torch.no_grad()
def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_with_grad`, without gradient (labels, ids, indices)."""
    return _gather(x, _sizes(x)) if _active() else x


@torch.no_grad()
def reduce_state_(module: torch.nn.Module) -> torch.nn.Module:
    """Makes ``module``'s buffers equal on every rank, in place: floating buffers become the
    mean over ranks, integer and bool buffers the sum (counters), so a checkpoint does not
    depend on which rank wrote it. Buffers already equal everywhere stay as they are."""
    if not _active():
        return module
    size = dist.get_world_size()
    for buf in module.buffers():
        if _same_everywhere(buf):       # e.g. state computed from all-reduced counts
            continue
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= size
        elif buf.dtype == torch.bool:
            acc = buf.to(torch.int32)
            dist.all_reduce(acc)
            buf.copy_(acc > 0)
        else:
            dist.all_reduce(buf)
    return module


def _same_everywhere(buf: torch.Tensor) -> bool:
    flat = buf.detach().reshape(-1).to(torch.float64)
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def mean(t: torch.Tensor, w: World) -> torch.Tensor:
    if w.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= w.size
    return t


def barrier(w: World) -> None:
    if w.distributed:
        dist.barrier()


@torch.no_grad()
def param_divergence(module: torch.nn.Module, w: World) -> float:
    """Largest absolute difference of any parameter from rank 0's copy (0 when in sync)."""
    if not w.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
