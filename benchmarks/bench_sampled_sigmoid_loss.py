"""Sampled weighted sigmoid loss, forward + backward, side by side.

    python benchmarks/bench_sampled_sigmoid_loss.py                 # issue shapes, fp32 and bf16
    python benchmarks/bench_sampled_sigmoid_loss.py --quick --device cpu

Implementations (each computes the loss and d loss / d logits):
  bce_eager / bce_compile   F.binary_cross_entropy_with_logits(pos_weight=12): no class weights,
                            no sampling: the plain loss the fused op has to beat
  composite_eager / _compile  the paper's rules written with PyTorch ops: per-class counts,
                            negative down-sampling and column keeps from torch.rand, class weights
  fusedembed                fusedembed.ops.sampled_sigmoid_loss (counts + one fused pass; backward
                            adds nothing when grad_output is 1)
  part:counts / part:forward  where fusedembed's time goes: the per-class counts alone, and the
                            fused pass alone (loss and gradient, no autograd)
The GB/s column uses the memory floor: read logits and targets once, write the gradient once
(for the part: rows it is that floor over the part's time, not the part's own traffic).
0.1% positives, neg_ratio 5, empty_keep 0.1, as in the paper.
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Case, parser, run_cases  # noqa: E402

from fusedembed.ops import sampled_sigmoid_loss  # noqa: E402
from fusedembed.ops.sampled_sigmoid_loss import sampled_sigmoid_loss_counts  # noqa: E402

FULL_SHAPES = [(256, 11166), (4096, 11166), (1024, 100000)]
QUICK_SHAPES = [(64, 1000), (256, 11166)]
POS_WEIGHT, THRESHOLD, NEG_RATIO, EMPTY_KEEP = 12.0, 0.7, 5.0, 0.1


def composite_loss(z, y, class_weight):
    """The paper's rules with eager PyTorch ops (what a user writes without the fused op)."""
    pos = y >= THRESHOLD
    valid = y != -1
    npos = pos.sum(0)
    nneg = (valid & ~pos).sum(0)
    has_pos = npos > 0
    keep_neg = torch.clamp(NEG_RATIO * npos / nneg.clamp(min=1), max=1.0)
    entry_keep = torch.rand_like(z, dtype=torch.float32) < keep_neg
    column_keep = torch.rand(z.shape[1], device=z.device) < EMPTY_KEEP
    mask = torch.where(has_pos, pos | entry_keep, column_keep) & valid
    pw = torch.tensor(POS_WEIGHT, device=z.device, dtype=z.dtype)
    ce = F.binary_cross_entropy_with_logits(z, y.to(z.dtype), pos_weight=pw, reduction="none")
    return (ce * mask * class_weight).sum() / z.shape[0]


def bce_loss(z, y):
    pw = torch.tensor(POS_WEIGHT, device=z.device, dtype=z.dtype)
    return F.binary_cross_entropy_with_logits(z, y, pos_weight=pw, reduction="sum") / z.shape[0]


def fwd_bwd(loss_fn, z, *args):
    def run():
        loss = loss_fn(z, *args)
        (grad,) = torch.autograd.grad(loss, z)
        return loss, grad

    return run


def fused_pass(z, y, w):
    """The fused pass alone: given counts, loss and gradient, as the autograd forward runs it."""
    counts = sampled_sigmoid_loss_counts(y, THRESHOLD)
    pw = torch.tensor(POS_WEIGHT, device=z.device)
    return lambda: torch.ops.fusedembed.sampled_sigmoid_loss(z, y, counts, w, pw, THRESHOLD, NEG_RATIO, EMPTY_KEEP,
                                                            1, 0, 0, "mean", True)


def make_cases(args):
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    dev = args.device
    cases = []
    compiled_bce = torch.compile(bce_loss)
    compiled_composite = torch.compile(composite_loss)
    for dtype in (torch.float32, torch.bfloat16):
        for B, C in shapes:
            g = torch.Generator(device="cpu").manual_seed(0)
            z = (torch.randn(B, C, generator=g) * 3).to(dev, dtype).requires_grad_()
            y = (torch.rand(B, C, generator=g) < 1e-3).to(dev, dtype)
            w = torch.rand(C, generator=g).to(dev) + 0.5
            step = [0]

            def fused(z_, y_, w_, step=step):
                step[0] += 1  # a fresh random stream each call, as in training
                return sampled_sigmoid_loss(z_, y_, w_, pos_weight=POS_WEIGHT, pos_threshold=THRESHOLD,
                                            neg_ratio=NEG_RATIO, empty_keep=EMPTY_KEEP, seed=1, offset=step[0])

            elt = torch.finfo(dtype).bits // 8
            floor = B * C * (elt + y.element_size() + elt)  # read logits, targets; write grad
            name = f"{B}x{C} {str(dtype).replace('torch.', '')}"
            cases.append(Case(
                name=name,
                impls={
                    "bce_eager": fwd_bwd(bce_loss, z, y),
                    "bce_compile": fwd_bwd(compiled_bce, z, y),
                    "composite_eager": fwd_bwd(composite_loss, z, y, w),
                    "composite_compile": fwd_bwd(compiled_composite, z, y, w),
                    "fusedembed": fwd_bwd(fused, z, y, w),
                    "part:counts": lambda y=y: sampled_sigmoid_loss_counts(y, THRESHOLD),
                    "part:forward": fused_pass(z.detach(), y, w),
                },
                bytes_moved=floor,
                params={"B": B, "C": C, "dtype": str(dtype).replace("torch.", "")},
            ))
    return cases


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_cases(make_cases(args), args)


if __name__ == "__main__":
    main()
