"""Input checks and the tie-aware ranking shared by the metrics."""

import torch

TIES = ("pessimistic", "optimistic")
DEFAULT_BLOCK = 1 << 22          # similarity entries per block (16 MiB of float32)


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


def rows_per_block(n_cols: int, block: int) -> int:
    return max(1, block // max(n_cols, 1))


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
