"""The one rule for choosing a device, used by the trainer, evaluation, embedding and demos."""

from typing import Union

import torch

from .errors import UsageError


def resolve_device(device: Union[None, str, torch.device] = "auto", *, local_rank: int = 0,
                   what: str = "device") -> torch.device:
    """``"auto"`` (or None): the process's CUDA GPU (``cuda:<local_rank>``) when one is visible,
    else the CPU. Anything else is taken as given, after checking it can be used here, so a
    recipe asking for CUDA on a machine without one fails at once with a message naming
    ``what`` (e.g. ``"trainer.device"``) instead of deep inside the first step."""
    if device is None or device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{what}={device!r} but no CUDA GPU is visible on this machine; use "
                             f"{what}=auto (the GPU when there is one) or {what}=cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"{what}={device!r} but only {count} CUDA device(s) are visible")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise UsageError(f"{what} must be 'auto', 'cpu' or a CUDA device, got {device!r}")
    return dev
