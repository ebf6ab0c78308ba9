"""`fusedembed demo`: the end-to-end path on the embedded "scenes" data, on whatever device is there.

Builds everything through the registries (dataset, GeM-pooled backbone, model, the fused
sampled weighted sigmoid loss, the multi-label evaluator), trains a small model and prints its
P@k / R@k / F1@k / mAP next to two baselines that need no learning: random scores and the
train-set label frequencies. Plugins with full recipes replace this loop by the trainer.
"""

import time

import torch

from .data import collate
from .registry import build


def _loader(dataset, batch_size, shuffle, generator=None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                                       generator=generator)


def _baseline(name, scores, targets):
    from .metrics import multilabel_map, multilabel_topk

    return {"model": name, **multilabel_topk(scores, targets), **multilabel_map(scores, targets)}


def run(epochs: int = 8, batch_size: int = 64, train_images: int = 8000, test_images: int = 1000,
        lr: float = 0.05, seed: int = 0, device: str = None, out=print) -> dict:
    torch.manual_seed(seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out(f"fusedembed demo: multi-label training on the embedded scenes data ({device})")
    train = build("dataset", {"name": "scenes", "num_images": train_images, "view": "image", "seed": seed},
                  split="train")
    test = build("dataset", {"name": "scenes", "num_images": test_images, "view": "image", "seed": seed,
                             "vocab": train.vocab, "train_images": train_images}, split="test")
    num_classes = len(train[0]["labels"])
    model = build("model", {"name": "image_embedding", "num_classes": num_classes, "embed_dim": 128,
                            "backbone": {"name": "tiny_cnn", "width": 32, "depth": 4, "pool": "gem"}}).to(device)
    loss_fn = build("loss", {"name": "sampled_weighted_sigmoid", "num_classes": num_classes, "pos_weight": 2.0,
                             "neg_ratio": 5.0, "empty_keep": 0.1, "seed": seed}).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    steps = epochs * -(-len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        for batch in _loader(train, batch_size, True, gen):
            images, labels = batch["image"].to(device), batch["labels"].to(device)
            loss = loss_fn(model({"image": images})["logits"], labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        out(f"  epoch {epoch + 1}/{epochs}  loss {total / n:.4f}  ({time.time() - start:.0f} s)")

    evaluator = build("evaluator", {"name": "multilabel"})
    metrics = {"model": "tiny_cnn + GeM (trained)", **evaluator(model, _loader(test, 256, False), device=device)}
    targets = torch.stack([test[i]["labels"] for i in range(len(test))])
    prior = torch.stack([train[i]["labels"] for i in range(len(train))]).mean(0)
    rows = [_baseline("random scores", torch.rand(targets.shape, generator=gen), targets),
            _baseline("train label frequency", prior.expand_as(targets).clone(), targets), metrics]
    cols = {"p@5": "P@5", "r@5": "R@5", "f1@5": "F1@5", "f1@10": "F1@10", "map": "mAP"}
    out(f"\ntest split, {len(test)} images, {num_classes} classes (percent)")
    out(f"{'model':<28}" + "".join(f"{c:>8}" for c in cols.values()))
    for row in rows:
        out(f"{row['model']:<28}" + "".join(f"{row[c]:8.1f}" for c in cols))
    return metrics
