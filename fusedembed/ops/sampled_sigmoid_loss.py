"""Sampled weighted sigmoid cross-entropy (Tencent ML-Images): class weights, a positive weight and
random down-sampling of negatives, in one pass that also writes the gradient."""

import math
from numbers import Real
from typing import Optional, Union

import torch

__all__ = ["sampled_sigmoid_loss", "sampled_sigmoid_loss_counts"]

_NAME = "sampled_sigmoid_loss"


def _check_scalars(pos_threshold, neg_ratio, empty_keep, seed, offset, row_start):
    """Python types, and what the op's int64 cannot hold; the values' ranges are the kernels' checks."""
    def real(name, v):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{_NAME}: {name} must be a float, got {type(v).__name__}")
        return float(v)

    for name, v in (("seed", seed), ("offset", offset), ("row_start", row_start)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{_NAME}: {name} must be an int, got {type(v).__name__}")
        if v >= 2**63:
            raise ValueError(f"{_NAME}: {name} must be in [0, 2^63), got {v}")
    return (real("pos_threshold", pos_threshold), None if neg_ratio is None else real("neg_ratio", neg_ratio),
            real("empty_keep", empty_keep))


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
    pos_threshold = _check_scalars(pos_threshold, None, 0.0, 0, 0, 0)[0]
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
            A reduced loss is returned in float32 (float64 for float64 logits) whatever the logits'
            dtype, as a float16 sum overflows at 65504; "none" terms and the gradient keep it.
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

    Bad values. Tensor values are checked on the CPU only (a check on the GPU costs a host sync),
    the error naming the first bad value: targets outside [0, 1] and not -1 raise on the CPU; on
    CUDA they make their entry's loss and gradient NaN, kept or not. Negative or non-finite weights
    raise on the CPU and are used as given on CUDA. Logits are never checked: a NaN logit makes the
    loss and its entry's gradient NaN where the entry is kept; dropped entries and zero-weight
    columns are skipped, so their logits, NaN or inf, cannot affect anything; an infinite logit that
    agrees with its target (+inf for y = 1, -inf for y = 0) costs 0, one that disagrees costs inf,
    and gradients stay finite for infinite logits.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"{_NAME}: logits and targets must be tensors, got {type(logits).__name__} and "
                        f"{type(targets).__name__}")
    if not isinstance(class_weight, torch.Tensor):
        raise TypeError(f"{_NAME}: class_weight must be a (C,) or (2, C) tensor, got {type(class_weight).__name__}")
    pos_threshold, neg_ratio, empty_keep = _check_scalars(pos_threshold, neg_ratio, empty_keep, seed, offset,
                                                          row_start)
    class_weight = _weight_tensor("class_weight", class_weight, logits)
    pos_weight = _weight_tensor("pos_weight", pos_weight, logits)
    if counts is None:
        counts = torch.ops.fusedembed.sampled_sigmoid_loss_counts(targets, pos_threshold)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, _, kept = torch.ops.fusedembed.sampled_sigmoid_loss(
        logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed, offset,
        row_start, reduction, compute_grad)
    return (loss, counts, kept) if return_stats else loss

