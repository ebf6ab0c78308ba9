import math
from typing import Optional

import torch
from torch import nn

from ..ops import gem_pool

PARAMETRIZATIONS = ("log", "direct")


class GeM(nn.Module):
    """Generalized-mean pooling (B, C, H, W) or (B, C, L) -> (B, C), with a learnable exponent.

    ``parametrization="log"`` stores p as log p (``log_p``), so every value the optimizer
    reaches keeps p > 0 without clamping, and steps are relative to p's size;
    ``"direct"`` stores p itself (``p_value``), so an SGD step on it is a step on p (as the
    papers that fine-tune p write it). ``per_channel=True`` learns one p per channel and needs
    ``num_channels``. With ``learn_p=False``, p is a fixed buffer.

    Two exponents are the limits of the mean, computed exactly and not by ``gem_pool``:
    ``p = 1`` with p fixed is average pooling (no clamp at eps), ``p = inf`` (fixed only) is
    max pooling.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True, per_channel: bool = False,
                 num_channels: Optional[int] = None, parametrization: str = "log"):
        super().__init__()
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"GeM: eps must be finite and > 0, got {eps}")
        if per_channel and (num_channels is None or num_channels < 1):
            raise ValueError(f"GeM: per_channel=True needs num_channels >= 1, got {num_channels}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"GeM: parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        self.eps, self.parametrization = eps, parametrization
        self._shape = (num_channels,) if per_channel else ()
        self._name = "log_p" if parametrization == "log" else "p_value"
        self._check_p(p, learn_p)
        self._store(self._encode(torch.full(self._shape, float(p))), learn_p)

    @staticmethod
    def _check_p(p: float, learn_p: bool) -> None:
        if math.isinf(p) and p > 0:
            if learn_p:
                raise ValueError("GeM: p = inf (max pooling) cannot be learned: pass learn_p=False")
        elif not (math.isfinite(p) and p > 0):
            raise ValueError(f"GeM: p must be finite and > 0, got {p} (p = inf, max pooling, is allowed fixed)")

    def _encode(self, p: torch.Tensor) -> torch.Tensor:
        return p.log() if self.parametrization == "log" else p

    def _store(self, value: torch.Tensor, learn: bool) -> None:
        if self._name in self._parameters:
            del self._parameters[self._name]
        if self._name in self._buffers:
            del self._buffers[self._name]
        if learn:
            setattr(self, self._name, nn.Parameter(value))
        else:
            self.register_buffer(self._name, value)

    @property
    def raw_p(self) -> torch.Tensor:
        """The stored tensor (``log_p`` or ``p_value``)."""
        return getattr(self, self._name)

    @property
    def learn_p(self) -> bool:
        return isinstance(self.raw_p, nn.Parameter)

    @property
    def p(self) -> torch.Tensor:
        return self.raw_p.exp() if self.parametrization == "log" else self.raw_p

    @torch.no_grad()
    def set_p(self, p: float) -> None:
        """Sets every p to ``p`` in place (same parameter object, so an optimizer keeps it)."""
        self._check_p(p, self.learn_p)
        self.raw_p.copy_(self._encode(torch.full(self._shape, float(p), device=self.raw_p.device)))

    def set_learn_p(self, learn: bool) -> None:
        """Turns p into a parameter (True) or a buffer (False), keeping its value."""
        value = self.raw_p.detach().clone()
        if learn:
            self._check_p(float(self.p.detach().max()), True)
        self._store(value, learn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learn_p and self.raw_p.dim() == 0:
            p = float(self.p)
            if math.isinf(p):
                return x.flatten(2).amax(2)
            if p == 1.0:
                return x.flatten(2).mean(2)
        return gem_pool(x, self.p, self.eps)

    def extra_repr(self) -> str:
        p = self.p.detach()
        shown = f"{p.item():.4g}" if p.dim() == 0 else f"per-channel({p.numel()})"
        return (f"p={shown}, eps={self.eps}, learn_p={self.learn_p}, "
                f"parametrization={self.parametrization}")
