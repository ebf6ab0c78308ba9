"""Evaluation as the paper reports it, and by class frequency.

Instance level (paper Sec. 3.2): for each image the k best-scored classes are its prediction;
P@k = hits / k, R@k = hits / (its positives), F1@k = 2 P R / (P + R), each computed PER IMAGE
and then averaged over the images (the paper's formulas; not the F1 of the mean P and R);
images without a positive are left out. k = 5 and 10. Per class: AP ranking the images by the
class's score, mAP over the classes with a positive. Targets are positive at >= ``threshold``.

By training frequency: the classes are sorted by their positives in ``train_data`` and cut in
terciles (``rare`` the least frequent third, ``mid``, ``frequent``); each tercile reports mAP
over its classes and P@k/R@k/F1@k with the ranking restricted to its classes. Metric names:
``p@5``, ``map``, ``rare/map``, ``rare/f1@5`` ...; values in percent (``fusedembed.metrics``).
"""

from typing import Dict, List, Optional, Sequence

import torch

from fusedembed import build, spec
from fusedembed.metrics import multilabel_map, multilabel_topk, topk_accuracy

TERCILES = ("rare", "mid", "frequent")


def terciles(counts: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Class indices of each frequency third (ties broken by class index; sizes differ by at
    most one, the rare third the largest)."""
    order = sorted(range(len(counts)), key=lambda c: (int(counts[c]), c))
    bounds = [0, -(-len(order) // 3), len(order) - len(order) // 3, len(order)]
    return {name: torch.tensor(order[bounds[i]:bounds[i + 1]]) for i, name in enumerate(TERCILES)}


@torch.no_grad()
def predict(model, loader, device, output: str = "logits", target: str = "labels"):
    """(scores, targets) of a split, on the CPU."""
    model.eval()
    scores, targets = [], []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        scores.append(model(batch)[output].float().cpu())
        targets.append(torch.as_tensor(batch[target]).cpu())
    return torch.cat(scores), torch.cat(targets)


def multilabel_report(scores, targets, ks: Sequence[int] = (5, 10), threshold: float = 0.5,
                      groups: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, float]:
    """The metrics of the module docstring from scores and targets; ``groups``: class subsets
    (e.g. :func:`terciles`), each reported under its name."""
    targets = targets.float()
    out = {**multilabel_topk(scores, targets, ks=ks, threshold=threshold),
           **multilabel_map(scores, targets, threshold=threshold)}
    for name, classes in (groups or {}).items():
        sub_t, sub_s = targets[:, classes], scores[:, classes]
        sub_ks = [k for k in ks if k <= len(classes)]
        if (sub_t >= threshold).any():
            if sub_ks:
                topk = multilabel_topk(sub_s, sub_t, ks=sub_ks, threshold=threshold)
                out |= {f"{name}/{k}": v for k, v in topk.items()}
            out |= {f"{name}/{k}": v for k, v in multilabel_map(sub_s, sub_t, threshold=threshold).items()}
    return out


class MultiLabelTerciles:
    """P@k / R@k / F1@k and mAP of ``logits`` against ``labels``, overall and per training
    frequency tercile (when ``train_data`` names the training set, built once to count its
    labels with its ``label_counts()``)."""

    def __init__(self, ks: List[int] = (5, 10), threshold: float = 0.5, output: str = "logits",
                 train_data: Optional[spec("dataset")] = None):
        self.ks, self.threshold, self.output = tuple(ks), threshold, output
        self.train_data, self._groups = train_data, None

    def groups(self) -> Optional[Dict[str, torch.Tensor]]:
        if self.train_data is not None and self._groups is None:
            dataset = build("dataset", self.train_data, split="train")
            if not hasattr(dataset, "label_counts"):
                raise ValueError(f"multilabel_terciles: train_data {self.train_data!r} has no label_counts()")
            self._groups = terciles(dataset.label_counts(self.threshold))
        return self._groups

    def __call__(self, model, loader, *, device) -> Dict[str, float]:
        scores, targets = predict(model, loader, device, self.output, "labels")
        return multilabel_report(scores, targets, self.ks, self.threshold, self.groups())


class Accuracy:
    """Top-k accuracy (percent) of ``logits`` against the int ``label`` (finetune.py's task)."""

    def __init__(self, ks: List[int] = (1, 5), output: str = "logits"):
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"accuracy: ks must be ints >= 1, got {ks!r}")
        self.ks, self.output = tuple(ks), output

    def __call__(self, model, loader, *, device) -> Dict[str, float]:
        scores, labels = predict(model, loader, device, self.output, "label")
        return accuracy(scores, labels, self.ks)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1,)) -> Dict[str, float]:
    """``top{k}`` for the ks up to the number of classes (the core's topk_accuracy: equal
    scores rank pessimistically, NaN scores are refused)."""
    return topk_accuracy(scores, labels, [k for k in ks if k <= scores.shape[1]] or ks)
