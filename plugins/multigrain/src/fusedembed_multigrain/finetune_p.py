"""p* at the test resolution (``scripts/finetune_p.py``): with every weight frozen and BN in
eval mode, only the GeM exponent trains, by SGD (lr 0.005, momentum 0.9) with polynomial
decay (power 0.9) over one pass of batch-4 steps on ``images_per_class`` (50) training
images per class, embedded at the target resolution in "rect" mode (largest side = s*, no
crop). Images of different sizes are forwarded one by one within a batch (the release's
list collate), never resized to squares. The alternative, :func:`cross_validate_p`, picks
the p with the best accuracy on held-out images among candidates.
"""

import math
from collections import Counter
from typing import Iterable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from fusedembed.metrics import topk_accuracy

from .transforms import eval_transform


def select_per_class(labels: Sequence[int], images_per_class: int = 50) -> List[int]:
    """The first ``images_per_class`` indices of each class, in dataset order."""
    count, out = Counter(), []
    for i, c in enumerate(int(x) for x in labels):
        if count[c] < images_per_class:
            out.append(i)
            count[c] += 1
    return out


def _logits(model, images: Iterable[torch.Tensor], device) -> torch.Tensor:
    return torch.cat([model({"image": im[None].to(device)})["logits"] for im in images])


def finetune_p(model, images: Sequence[torch.Tensor], labels: Sequence[int], size: int, *, lr: float = 0.005,
               momentum: float = 0.9, power: float = 0.9, batch_size: int = 4, seed: int = 0,
               device="cpu") -> float:
    """Trains the model's p on (images, labels) at ``size``; returns p* (left in the model,
    fixed again). ``images``: (3, H, W) float tensors in [0, 1] of any size."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"finetune_p: need as many labels as images (> 0), got {len(images)} and {len(labels)}")
    tf = eval_transform("rect", size)
    pool = model.pool
    frozen = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in frozen:
        q.requires_grad_(False)
    pool.set_learn_p(True)
    p = pool.raw_p
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    steps = math.ceil(len(order) / batch_size)
    model.eval()                                      # BN statistics frozen
    try:
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (1 - i / steps) ** power
            part = order[i * batch_size:(i + 1) * batch_size]
            logits = _logits(model, (tf(images[j]) for j in part), device)
            target = torch.as_tensor([int(labels[j]) for j in part], device=logits.device)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            (grad,) = torch.autograd.grad(loss, [p])
            p.grad = grad
            opt.step()
            with torch.no_grad():
                p.clamp_(min=1e-3)                    # keep p > 0
    finally:
        pool.set_learn_p(False)
        for q, flag in frozen:
            q.requires_grad_(flag)
    return float(pool.p)


@torch.no_grad()
def accuracy(model, images: Sequence[torch.Tensor], labels: Sequence[int], size: int, device="cpu") -> float:
    """Top-1 accuracy (%) at ``size`` in rect mode, images forwarded one by one (the core's
    topk_accuracy: NaN logits are an error, not argmax's pick)."""
    model.eval()
    tf = eval_transform("rect", size)
    logits = _logits(model, (tf(im) for im in images), device)
    return topk_accuracy(logits.float(), list(labels), ks=(1,))["top1"]


def cross_validate_p(model, images, labels, size: int, candidates: Sequence[float] = (1, 2, 3, 4, 5, 6, 8),
                     device="cpu") -> Tuple[float, dict]:
    """(best p, {p: accuracy}) over ``candidates``; the model keeps the best p."""
    scores = {}
    for cand in candidates:
        model.pool.set_p(float(cand))
        scores[float(cand)] = accuracy(model, images, labels, size, device)
    best = max(scores, key=lambda c: (scores[c], -abs(c - 3)))
    model.pool.set_p(best)
    return best, scores
