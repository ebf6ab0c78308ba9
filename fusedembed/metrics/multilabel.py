"""Multi-label classification metrics (Tencent ML-Images evaluation).

Targets may be soft (0.8/0.9/1.0): an entry is positive when ≥ ``threshold`` (0.5), negative
below it, and ignored when < 0 (the −1 "unknown" of the loss); NaN targets and NaN scores are
refused, not ignored. Ties between scores follow
``ties`` (see :mod:`.retrieval`): pessimistic by default. Values in percent.
"""

import math

import torch

from ._common import check_ks, check_ties, no_nan, pct, ranked_relevance


def _inputs(scores, targets, threshold):
    s = torch.as_tensor(scores)
    t = torch.as_tensor(targets, device=s.device)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} must be the "
                         "same (N, C) shape")
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number > 0 (targets < 0 are ignored), "
                         f"got {threshold!r}")
    s = s if s.dtype == torch.float64 else s.float()
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    t = no_nan(t.float(), "targets")
    return s, t >= threshold, t >= 0


def multilabel_topk(scores, targets, ks=(5, 10), threshold: float = 0.5,
                    ties: str = "pessimistic") -> dict:
    """Instance-level P@k, R@k and F1@k over images.

    Per image: P@k = hits/k, R@k = hits/positives, F1@k = 2·P·R/(P+R) (0 when no hit), with
    hits = positives among the k best-scored classes. Each is then AVERAGED OVER IMAGES (the
    "per image" F1 — not the F1 of the averaged P and R). Images without any positive are left
    out of all three (``num_images`` says how many counted).
    """
    check_ties(ties)
    ks = check_ks(ks)
    s, pos, valid = _inputs(scores, targets, threshold)
    keep = pos.any(1)
    s, pos, valid = s[keep], pos[keep], valid[keep]
    if not len(s):
        raise ValueError("no image has a positive label")
    rel = ranked_relevance(s, pos, ties, valid)
    npos = pos.sum(1).double()
    out = {}
    for k in ks:
        hits = rel[:, :k].sum(1).double()
        p, r = hits / k, hits / npos
        f1 = torch.where(hits > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))
        out |= {f"p@{k}": pct(p.mean()), f"r@{k}": pct(r.mean()), f"f1@{k}": pct(f1.mean())}
    out["num_images"] = float(len(s))
    return out


def average_precision(scores, relevant, ties: str = "pessimistic", valid=None) -> torch.Tensor:
    """Non-interpolated AP per row: mean over the relevant items of the precision at their
    rank. Rows without relevant items give NaN; NaN scores are refused."""
    scores = torch.as_tensor(scores)
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return ranked_ap(ranked_relevance(scores, relevant, ties, valid))


def ranked_ap(rel: torch.Tensor) -> torch.Tensor:
    """Non-interpolated AP of rows of relevance already in ranked order."""
    cum = rel.cumsum(1).double()
    prec = cum / torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    npos = rel.sum(1).double()
    return (prec * rel).sum(1) / npos


def multilabel_class_ap(scores, targets, threshold: float = 0.5, ties: str = "pessimistic") -> torch.Tensor:
    """(C,) float64 AP of each class, ranking the images by its score, in percent; NaN for a
    class without a positive image (for per-class plots and means over class subsets)."""
    s, pos, valid = _inputs(scores, targets, threshold)
    return 100 * average_precision(s.T, pos.T, ties, valid.T)


def multilabel_map(scores, targets, threshold: float = 0.5, ties: str = "pessimistic", classes=None) -> dict:
    """mAP over classes: AP of each class ranking the images by score, averaged over the
    classes that have at least one positive image (``num_classes`` of them); ``classes``
    (indices or a (C,) bool mask) restricts the mean to a subset, e.g. the rare ones."""
    ap = multilabel_class_ap(scores, targets, threshold, ties)
    has = ~torch.isnan(ap)
    if classes is not None:
        subset = torch.zeros_like(has)
        subset[torch.as_tensor(classes, device=has.device)] = True
        has &= subset
    if not has.any():
        raise ValueError("no class (of those asked for) has a positive image")
    return {"map": float(ap[has].mean()), "num_classes": float(has.sum())}
