"""Sampled weighted sigmoid cross-entropy (Tencent ML-Images): class weights, a positive weight and
random down-sampling of negatives, in one pass that also writes the gradient."""

import math
from numbers import Real
from typing import Optional, Union

import torch

from .._extension import has_extension, warn_reference_fallback
from . import _reference

__all__ = ["sampled_sigmoid_loss", "sampled_sigmoid_loss_counts"]

_REDUCTIONS = ("mean", "mean_classes", "sum", "none")
_NAME = "sampled_sigmoid_loss"


def _check_scalars(pos_threshold, neg_ratio, empty_keep, seed, offset, row_start, reduction):
    def real(name, v):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{_NAME}: {name} must be a float, got {type(v).__name__}")
        return float(v)

    def integer(name, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{_NAME}: {name} must be an int, got {type(v).__name__}")
        if not 0 <= v < 2**63:
            raise ValueError(f"{_NAME}: {name} must be in [0, 2^63), got {v}")
        return v

    pos_threshold = real("pos_threshold", pos_threshold)
    if not 0 < pos_threshold <= 1:
        raise ValueError(f"{_NAME}: pos_threshold must be in (0, 1], got {pos_threshold:g}")
    if neg_ratio is not None:
        neg_ratio = real("neg_ratio", neg_ratio)
        if not (math.isfinite(neg_ratio) and neg_ratio > 0):
            raise ValueError(f"{_NAME}: neg_ratio must be finite and > 0 (or None to keep every negative), "
                             f"got {neg_ratio:g}")
    empty_keep = real("empty_keep", empty_keep)
    if not 0 <= empty_keep <= 1:
        raise ValueError(f"{_NAME}: empty_keep must be a probability in [0, 1], got {empty_keep:g}")
    integer("seed", seed)
    integer("offset", offset)
    integer("row_start", row_start)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{_NAME}: reduction must be 'mean', 'mean_classes', 'sum' or 'none', got {reduction!r}")
    return pos_threshold, neg_ratio, empty_keep


def _weight_tensor(name: str, w, like: torch.Tensor) -> torch.Tensor:
    if isinstance(w, torch.Tensor):
        if w.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{_NAME}: {name} must not require grad (the loss is differentiable in logits only)")
        return w
    if isinstance(w, bool) or not isinstance(w, Real):
        raise TypeError(f"{_NAME}: {name} must be a float or a tensor, got {type(w).__name__}")
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{_NAME}: {name} must be finite and >= 0, got {w:g}")
    return torch.full((), float(w), dtype=torch.float32, device=like.device)


def sampled_sigmoid_loss_counts(targets: torch.Tensor, pos_threshold: float = 0.7) -> torch.Tensor:
    """Per-class statistics of a (B, C) target batch: a (2, C) int32 tensor, row 0 the positives
    (y >= pos_threshold), row 1 the negatives (every other entry that is not -1). All-reduce it
    across ranks and pass it as ``counts=`` so every rank takes the same class decisions."""
    pos_threshold = _check_scalars(pos_threshold, None, 0.0, 0, 0, 0, "mean")[0]
    if not has_extension():
        warn_reference_fallback(_NAME)
        return _reference.sampled_sigmoid_loss_counts(targets, pos_threshold)
    return torch.ops.fusedembed.sampled_sigmoid_loss_counts(targets, pos_threshold)


def sampled_sigmoid_loss(logits: torch.Tensor, targets: torch.Tensor, class_weight: torch.Tensor, *,
                         pos_weight: Union[float, torch.Tensor] = 12.0, pos_threshold: float = 0.7,
                         neg_ratio: Optional[float] = None, empty_keep: float = 0.0, seed: int, offset: int = 0,
                         reduction: str = "mean", counts: Optional[torch.Tensor] = None, row_start: int = 0,
                         return_stats: bool = False):
    """Weighted sigmoid cross-entropy over (B, C) multi-label logits with sampled entries.

    For entry (i, j), with z the logit and y the target::

        CE   = pos_weight_j * y * softplus(-z) + (1 - y) * softplus(z)
        loss = sum_ij w_j m_ij CE / B        ("mean"; "mean_classes" also / C, "sum" neither,
                                               "none" returns the (B, C) terms w_j m_ij CE)

    The keep mask m: 0 where y = -1 (ignored). A class with a positive (some y >= pos_threshold)
    keeps all its positives and each negative with probability min(1, neg_ratio * npos / nneg)
    (every negative when neg_ratio is None). A class without positives keeps its whole column
    with probability empty_keep. Draws come from Philox4x32-10 keyed by (seed, offset, class,
    row_start + row): the same arguments give bit-identical decisions on CPU, CUDA and in
    ``fusedembed.ops._reference``.

    Args:
        logits: (B, C) float32/float16/bfloat16 (float64 too); B >= 1. Math in float32 (float64).
        targets: (B, C) soft labels in [0, 1], -1 to ignore; float, float16, bfloat16, uint8 or bool.
        class_weight: (C,) weights w, or (2, C): row 0 applies where the class has a positive in this
            batch, row 1 where it has none (for callers whose weight depends on this batch's state,
            as in SampledWeightedSigmoidLoss). Finite and >= 0. A zero weight skips the column.
        pos_weight: float, 1-element or (C,) tensor eta (finite, >= 0).
        seed, offset: the random stream, ints in [0, 2^63). The op reads no global RNG state.
        counts: (2, C) int32 from ``sampled_sigmoid_loss_counts`` (e.g. all-reduced across ranks);
            counted from targets when None.
        row_start: global index of this batch's first row (rank * B under data parallelism), so a
            split batch draws what the whole batch would; row_start + B <= 2^32.
        return_stats: also return ``counts`` and ``kept`` ((C,) bool: the columns that took part).

    Gradient: with respect to logits only, computed in the same pass as the loss when logits
    require grad and scaled by grad_output in backward (no double backward). A backward that
    frees the graph (no retain_graph) scales it in place and skips that pass when grad_output
    is 1, so ``loss.backward()`` adds no work after the forward.

    Bad values. Tensor values are checked on the CPU only (a check on the GPU costs a host sync):
    targets outside [0, 1] and not -1 raise on the CPU; on CUDA they make their entry's loss and
    gradient NaN, kept or not. Negative or non-finite weights raise on the CPU and are used as
    given on CUDA. Logits are never checked: a NaN logit makes the loss and its entry's gradient
    NaN where the entry is kept; dropped entries and zero-weight columns are skipped, so their
    logits, NaN or inf, cannot affect anything; an infinite logit that agrees with its target
    (+inf for y = 1, -inf for y = 0) costs 0, one that disagrees costs inf, and gradients stay
    finite for infinite logits.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"{_NAME}: logits and targets must be tensors, got {type(logits).__name__} and "
                        f"{type(targets).__name__}")
    if not isinstance(class_weight, torch.Tensor):
        raise TypeError(f"{_NAME}: class_weight must be a (C,) or (2, C) tensor, got {type(class_weight).__name__}")
    pos_threshold, neg_ratio, empty_keep = _check_scalars(pos_threshold, neg_ratio, empty_keep, seed, offset,
                                                          row_start, reduction)
    class_weight = _weight_tensor("class_weight", class_weight, logits)
    pos_weight = _weight_tensor("pos_weight", pos_weight, logits)
    if not has_extension():
        warn_reference_fallback(_NAME)
        if counts is None:
            counts = _reference.sampled_sigmoid_loss_counts(targets, pos_threshold)
        loss, kept = _reference.sampled_sigmoid_loss(logits, targets, counts, class_weight, pos_weight, pos_threshold,
                                                     neg_ratio, empty_keep, seed, offset, row_start, reduction)
        return (loss, counts, kept) if return_stats else loss
    if counts is None:
        counts = torch.ops.fusedembed.sampled_sigmoid_loss_counts(targets, pos_threshold)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, _, kept = torch.ops.fusedembed.sampled_sigmoid_loss(
        logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed, offset,
        row_start, reduction, compute_grad)
    return (loss, counts, kept) if return_stats else loss


if has_extension():

    @torch.library.register_fake("fusedembed::sampled_sigmoid_loss_counts")
    def _counts_fake(targets, pos_threshold):
        torch._check(targets.dim() == 2, lambda: f"{_NAME}: targets must be a 2-d (B, C) tensor")
        return targets.new_empty((2, targets.shape[1]), dtype=torch.int32)

    @torch.library.register_fake("fusedembed::sampled_sigmoid_loss_scale_grad_")
    def _scale_grad_fake(grad, grad_loss):
        return None

    @torch.library.register_fake("fusedembed::sampled_sigmoid_loss")
    def _loss_fake(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed,
                   offset, row_start, reduction, compute_grad):
        torch._check(logits.dim() == 2, lambda: f"{_NAME}: logits must be a 2-d (B, C) tensor")
        B, C = logits.shape
        loss = logits.new_empty((B, C)) if reduction == "none" else logits.new_empty(())
        grad = logits.new_empty((B, C)) if compute_grad else logits.new_empty((0,))
        return loss, grad, logits.new_empty((C,), dtype=torch.bool)

    def _setup_context(ctx, inputs, output):
        _, grad, kept = output
        ctx.compute_grad = inputs[-1]
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(grad, kept)

    def _backward(ctx, grad_loss, _grad_grad, _grad_kept):
        if not ctx.compute_grad:
            raise RuntimeError(f"{_NAME}: backward needs the forward call to have compute_grad=True")
        if torch.is_grad_enabled():
            # The saved gradient is a constant: a graph through it would have no second derivative.
            raise RuntimeError(f"{_NAME}: double backward is not supported (backward with create_graph=True)")
        if not ctx.needs_input_grad[0]:
            return (None,) * 13
        (grad,) = ctx.saved_tensors
        if grad_loss.dim() == 0 and type(grad) is torch.Tensor and _last_reader_of_saved_tensors():
            # The saved gradient becomes d loss / d logits in place: no new (B, C) tensor, and no
            # pass over it at all when grad_loss is 1 (the kernel checks, the host never waits).
            # Only plain eager tensors: tracers (fake, functional) get the out-of-place product.
            torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_(grad, grad_loss)
            return (grad,) + (None,) * 12
        return (grad * grad_loss,) + (None,) * 12

    def _last_reader_of_saved_tensors() -> bool:
        """True in an eager backward that frees the graph after it (no retain_graph): nothing
        reads the saved gradient again, so it may be overwritten."""
        if torch.compiler.is_compiling():
            return False
        keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
        return keep_graph is not None and not keep_graph()

    torch.library.register_autograd("fusedembed::sampled_sigmoid_loss", _backward, setup_context=_setup_context)
