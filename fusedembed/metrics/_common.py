"""Input checks and the tie-aware ranking shared by the metrics."""

import operator

import torch

# The blocked, overflow-safe scoring is the index's (one implementation for search and metrics).
from ..index import DEFAULT_BLOCK, score_blocks  # noqa: F401

TIES = ("pessimistic", "optimistic")


def check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def embeddings(x, name: str) -> torch.Tensor:
    """A finite 2-D float tensor (half precision upcast: ties there would be everywhere)."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (count, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def no_nan(x: torch.Tensor, name: str) -> torch.Tensor:
    """x, refused when it holds NaN (a NaN label or target equals nothing and would silently
    drop its item from the metric)."""
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN at index {tuple(torch.isnan(x).nonzero()[0].tolist())}")
    return x


def check_ks(ks, name: str = "ks") -> tuple[int, ...]:
    """Cut-offs k ≥ 1 (P@0 divides by zero, R@0 is always 0)."""
    ks = tuple(ks)
    try:
        out = tuple(operator.index(k) for k in ks if not isinstance(k, bool))
    except TypeError:
        out = ()
    if len(out) != len(ks) or not ks or min(out) < 1:
        raise ValueError(f"{name} must be integers >= 1, got {ks!r}")
    return out


def ranked_relevance(scores: torch.Tensor, relevant: torch.Tensor, ties: str,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Relevance (bool) of each row's items in ranked order: score descending; equal scores
    put non-relevant items first ("pessimistic") or relevant first ("optimistic"); items
    with ``valid`` False go last (and count as not relevant)."""
    check_ties(ties)
    key = relevant.to(torch.int8) if ties == "pessimistic" else (~relevant).to(torch.int8)
    order = torch.sort(key, dim=1, stable=True).indices
    by_score = torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_score)
    if valid is not None:
        invalid_first = (~valid).gather(1, order).to(torch.int8)
        order = order.gather(1, torch.sort(invalid_first, dim=1, stable=True).indices)
        relevant = relevant & valid
    return relevant.gather(1, order)


def pct(x) -> float:
    return float(x) * 100.0
