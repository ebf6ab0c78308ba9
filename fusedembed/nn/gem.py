import math
from typing import Optional

import torch
from torch import nn

from ..ops import gem_pool


class GeM(nn.Module):
    """Generalized-mean pooling (B, C, H, W) or (B, C, L) -> (B, C), with a learnable exponent.

    p is stored as log p (``log_p``), so every value the optimizer reaches keeps p > 0 without
    clamping, and steps are relative to p's size. ``per_channel=True`` learns one p per channel
    and needs ``num_channels``. With ``learn_p=False``, p is a fixed buffer.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True, per_channel: bool = False,
                 num_channels: Optional[int] = None):
        super().__init__()
        if not (math.isfinite(p) and p > 0):
            raise ValueError(f"GeM: p must be finite and > 0, got {p}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"GeM: eps must be finite and > 0, got {eps}")
        if per_channel and (num_channels is None or num_channels < 1):
            raise ValueError(f"GeM: per_channel=True needs num_channels >= 1, got {num_channels}")
        shape = (num_channels,) if per_channel else ()
        log_p = torch.full(shape, math.log(p))
        if learn_p:
            self.log_p = nn.Parameter(log_p)
        else:
            self.register_buffer("log_p", log_p)
        self.eps = eps

    @property
    def p(self) -> torch.Tensor:
        return self.log_p.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem_pool(x, self.p, self.eps)

    def extra_repr(self) -> str:
        p = self.p.detach()
        shown = f"{p.item():.4g}" if p.dim() == 0 else f"per-channel({p.numel()})"
        return f"p={shown}, eps={self.eps}, learn_p={isinstance(self.log_p, nn.Parameter)}"
