"""Pure-PyTorch references of every op: the tests' ground truth and the fallback when
fusedembed._C is not built. Clear over fast; same numerics contract as the kernels."""

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GeM over all dims after (B, C), scaled by the row maximum so nothing overflows.

    p is a 0-d/1-element tensor (shared) or a (C,) tensor (per channel)."""
    B, C = x.shape[:2]
    xc = x.reshape(B, C, -1).to(_acc_dtype(x.dtype)).clamp(min=eps)
    pc = p.to(xc.dtype).reshape(-1)
    pc = pc.view(1, -1) if pc.numel() > 1 else pc.reshape(())
    m = xc.amax(-1)
    ratio = xc / m.unsqueeze(-1)
    return (m * ratio.pow(pc.unsqueeze(-1) if pc.dim() else pc).mean(-1).pow(1 / pc)).to(x.dtype)
