"""Single-label classification: top-k accuracy from class scores.

A row is correct at k when its label's rank among the classes is ≤ k. Ranks count the classes
scoring above the label and, with ``ties="pessimistic"`` (default), those scoring equal to it
(``"optimistic"``: not those), so a collapsed model whose scores are all equal gets top-1 = 0,
not the share of whichever class ``topk`` happens to list first. NaN scores are refused:
``topk`` ranks NaN above every number, so a diverged model would still score.
"""

import torch

from ._common import check_ks, check_ties, no_nan, pct


def class_ranks(scores, labels, ties: str = "pessimistic") -> torch.Tensor:
    """1-based rank (N,) of each row's label among the C classes of ``scores`` (N, C)."""
    check_ties(ties)
    s = torch.as_tensor(scores)
    if s.ndim != 2 or not s.is_floating_point():
        raise ValueError(f"scores must be a 2-D float tensor (N, C), got {s.dtype} of shape {tuple(s.shape)}")
    nan = torch.isnan(s).any(1)
    if nan.any():
        raise ValueError(f"scores contain NaN (row {int(nan.nonzero()[0])} of {len(s)})")
    y = no_nan(torch.as_tensor(labels, device=s.device).reshape(-1), "labels")
    if len(y) != len(s):
        raise ValueError(f"labels has {len(y)} entries for {len(s)} rows of scores")
    if y.is_floating_point() and (y != y.floor()).any():
        raise ValueError(f"labels must be whole numbers, got {y[y != y.floor()][0].item()}")
    y = y.long()
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must be in [0, {s.shape[1]}), got {y.min().item()}..{y.max().item()}")
    own = s.gather(1, y[:, None])
    ahead = (s >= own) if ties == "pessimistic" else (s > own)
    # >= counts the label itself, which makes the count its rank; > needs the + 1.
    return (ahead.sum(1) + (ties != "pessimistic")).cpu()


def accuracy_from_ranks(ranks, ks=(1, 5)) -> dict:
    """``top{k}`` (percent) of 1-based ranks, e.g. those of :func:`class_ranks` gathered over
    batches."""
    ks = check_ks(ks)
    r = torch.as_tensor(ranks).reshape(-1)
    if r.numel() == 0:
        raise ValueError("no ranks: the split is empty")
    return {f"top{k}": pct((r <= k).double().mean()) for k in ks}


def topk_accuracy(scores, labels, ks=(1, 5), ties: str = "pessimistic") -> dict:
    """``top{k}``: percent of rows whose label is among the k best-scored classes."""
    return accuracy_from_ranks(class_ranks(scores, labels, ties), ks)
