"""Generalized-mean (GeM) pooling: ``y[b, c] = (mean_s max(x[b, c, s], eps)^p)^(1/p)``."""

import math
from numbers import Real
from typing import Union

import torch

from .._extension import has_extension, warn_reference_fallback
from . import _reference

__all__ = ["gem_pool"]


def _p_tensor(x: torch.Tensor, p) -> torch.Tensor:
    if isinstance(p, torch.Tensor):
        return p
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"gem_pool: p must be a float or a tensor, got {type(p).__name__}")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"gem_pool: p must be finite and > 0, got {p}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((), float(p), dtype=dtype, device=x.device)


def gem_pool(x: torch.Tensor, p: Union[float, torch.Tensor] = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM pooling of (B, C, H, W) or (B, C, L) feature maps to (B, C), in one pass.

    Args:
        x: float32/float16/bfloat16 (float64 too), contiguous NCHW or channels_last (no copy
            either way); (B, C, L) rows or its transposed (B, L, C) storage likewise.
        p: a float, a 0-d/1-element tensor (one learnable p) or a (C,) tensor (one p per
            channel); must be finite and > 0. A CPU tensor p is checked; on the GPU an invalid
            p gives NaN rows instead of costing a host sync every step.
        eps: inputs are clamped to at least eps (> 0); their gradient is 0 below it.

    Accumulates in float32 (float64 for float64) and scales each row by its maximum, so any
    finite input (fp16 up to 65504, tiny positives) gives finite outputs and gradients.
    Differentiable in x and in a tensor p.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gem_pool: x must be a tensor, got {type(x).__name__}")
    p_t = _p_tensor(x, p)
    eps = float(eps)
    if not has_extension():
        warn_reference_fallback("gem_pool")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"gem_pool: eps must be finite and > 0, got {eps}")
        return _reference.gem_pool(x, p_t, eps)
    return torch.ops.fusedembed.gem_pool(x, p_t, eps)


if has_extension():

    @torch.library.register_fake("fusedembed::gem_pool")
    def _gem_pool_fake(x, p, eps):
        torch._check(x.dim() in (3, 4), lambda: f"gem_pool: x must be (B, C, H, W) or (B, C, L), got {x.dim()}-d")
        return x.new_empty((x.shape[0], x.shape[1]))

    @torch.library.register_fake("fusedembed::gem_pool_backward")
    def _gem_pool_backward_fake(grad_y, x, p, y, eps, x_grad, p_grad):
        dx = torch.empty_like(x) if x_grad else x.new_empty((0,))
        dp = torch.empty_like(p) if p_grad else p.new_empty((0,))
        return dx, dp

    def _setup_context(ctx, inputs, output):
        x, p, eps = inputs
        ctx.save_for_backward(x, p, output)
        ctx.eps = eps

    def _backward(ctx, grad_y):
        x, p, y = ctx.saved_tensors
        x_grad, p_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dp = torch.ops.fusedembed.gem_pool_backward(grad_y, x, p, y, ctx.eps, x_grad, p_grad)
        return (dx if x_grad else None), (dp if p_grad else None), None

    torch.library.register_autograd("fusedembed::gem_pool", _backward, setup_context=_setup_context)
