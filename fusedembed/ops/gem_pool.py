"""Generalized-mean (GeM) pooling: ``y[b, c] = (mean_s max(x[b, c, s], eps)^p)^(1/p)``."""

import math
from numbers import Real
from typing import Union

import torch

__all__ = ["gem_pool"]


def _p_tensor(x: torch.Tensor, p) -> torch.Tensor:
    if isinstance(p, torch.Tensor):
        return p
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"gem_pool: p must be a float or a tensor, got {type(p).__name__}")
    # Checked here for every device: the kernels check tensor values on the CPU only.
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
        eps: inputs are clamped to at least eps; their gradient is 0 below it. eps must be finite
            and at least 1.175494e-38 (the smallest normal float32): below it the clamped values
            and their logarithms lose their exactness.

    Accumulates in float32 (float64 for float64) and scales each row by its maximum, so any
    finite input (fp16 up to 65504, tiny positives) gives finite outputs and gradients. A row
    holding +inf pools to +inf (the mean of powers is infinite), a row holding NaN to NaN.
    Differentiable in x and in a tensor p.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gem_pool: x must be a tensor, got {type(x).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"gem_pool: eps must be a float, got {type(eps).__name__}")
    return torch.ops.fusedembed.gem_pool(x, _p_tensor(x, p), float(eps)).to(x.dtype)

