"""torch.distributed for the trainer and for plugin losses, so N processes train like one.

The trainer joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK; NCCL on
CUDA, gloo on CPU). Losses that compare items across the batch (in-batch negatives, distance
weighted sampling, a B x B score matrix) call :func:`all_gather_with_grad` to see the global
batch; counters and running statistics kept in a loss's buffers stay identical on every rank
when the loss counts the global batch (:func:`gather_batch`); the trainer saves
:func:`consistent_state_dict`, so a checkpoint never depends on the rank that wrote it. Every function is the identity in a
single process, so plugin code is written once.
"""

import datetime
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist

from .errors import UserError


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


def shutdown(w: World, clean: bool = True) -> None:
    """Leaves the process group. After a clean run each rank first waits for the others (rank 0
    writes the report after the last collective): a rank tearing gloo down while a peer still
    holds its connections can abort ("terminate called without an active exception")."""
    if w.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
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


@torch.no_grad()
def consistent_state_dict(module: torch.nn.Module) -> dict:
    """``module.state_dict()`` with each buffer that differs between ranks reduced as
    :func:`reduce_state_` does (floating: mean, integer: sum, bool: any), leaving the module
    itself untouched: what the trainer saves, so a checkpoint does not depend on the rank that
    wrote it. Call it on every rank."""
    state = module.state_dict()
    if not _active():
        return state
    buffers = {name for name, _ in module.named_buffers()}     # parameters are DDP's to keep equal
    out = {}
    for key, value in state.items():
        if key in buffers and not _same_everywhere(value):
            value = value.clone()
            if value.is_floating_point():
                dist.all_reduce(value)
                value /= dist.get_world_size()
            elif value.dtype == torch.bool:
                acc = value.to(torch.int32)
                dist.all_reduce(acc)
                value = acc > 0
            else:
                dist.all_reduce(value)
        out[key] = value
    return out


def _same_everywhere(buf: torch.Tensor) -> bool:
    flat = buf.detach().reshape(-1).to(torch.float64)
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks too (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), with
    gradients through them: :class:`torch.nn.SyncBatchNorm` for any device, gloo on CPU
    included (which SyncBatchNorm refuses). Same parameters, buffers and state-dict keys as
    the layer it replaces; outside training, or alone, it is plain batch norm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected an input of at least 2 dims, got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), (x * x).sum(dims),
                           x.new_tensor([x.numel() // x.shape[1]], dtype=x.dtype)])
        total = _AllReduceSum.apply(local)
        c = x.shape[1]
        n = total[-1].detach()
        mean, var = total[:c] / n, total[c:2 * c] / n - (total[:c] / n) ** 2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm layer computing global-batch statistics: torch's
    SyncBatchNorm on CUDA, :class:`GlobalBatchNorm` elsewhere."""
    if any(p.is_cuda for p in module.parameters()):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module):
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            new.to(device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


class StalledRankError(UserError, RuntimeError):
    """A collective did not complete within ``trainer.dist_timeout_s``, or a peer died."""


# what gloo and NCCL say when a peer is too slow or gone
_STALL_SIGNS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


def stalled_error(err: BaseException, w: World, timeout_s: float, where: str):
    """A StalledRankError naming this rank, the collective (``where``) and the timeout when
    ``err`` is a backend's timeout or lost-peer error; None for other errors."""
    if not w.distributed or not any(s in str(err).lower() for s in _STALL_SIGNS):
        return None
    first = (str(err).strip().splitlines() or [""])[-1][:300]
    return StalledRankError(f"rank {w.rank} of {w.size}: a collective in {where} did not complete within "
                            f"trainer.dist_timeout_s={timeout_s:g} s: another rank stalled or died ({first}); "
                            f"the job stops instead of hanging")


def shard_range(n: int) -> range:
    """This rank's contiguous share of ``range(n)`` (the first ``n % size`` ranks get one more),
    so that :func:`gather_batch` of per-shard results restores the order of ``range(n)``. An
    evaluator embeds its shard and gathers; the whole range when not distributed."""
    if not _active():
        return range(n)
    size, rank = dist.get_world_size(), dist.get_rank()
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


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
