"""`fusedembed demo`: the end-to-end path on the embedded "scenes" data, on whatever device is there.

Runs the built-in recipe below through the trainer (dataset, GeM-pooled backbone, model, the
fused sampled weighted sigmoid loss, the multi-label evaluator) and prints the trained model's
P@k / R@k / F1@k / mAP on the test split next to two baselines that need no learning: random
scores and the train-set label frequencies.
"""

import tempfile

import torch
import yaml

from .config import apply_overrides, validate
from .devices import resolve_device
from .plugins import build

RECIPE = """
description: fusedembed demo, multi-label tiny_cnn + GeM on the embedded scenes data
model:
  name: image_embedding
  num_classes: 57           # scenes classes, ancestors included
  embed_dim: 128
  backbone: {name: tiny_cnn, width: 32, depth: 4, pool: gem}
losses:
  - {name: sampled_weighted_sigmoid, num_classes: 57, pos_weight: 2.0, neg_ratio: 5.0,
     empty_keep: 0.1, seed: 0, inputs: {targets: labels}}
data:
  train: {name: scenes, num_images: 8000, view: image, seed: 0}
  test: {name: scenes, num_images: 1000, view: image, seed: 0, train_images: 8000}
evaluators: [{name: multilabel}]
trainer:
  epochs: 8
  lr: 0.05
  batch_size: 64
  log_every: 125            # one line per epoch of 8000 images
  optimizer: {name: sgd, momentum: 0.9, nesterov: true, weight_decay: 1.0e-4}
  scheduler: {name: cosine, warmup_epochs: 1, warmup_factor: 0.04}
"""


def recipe(epochs: int = 8, train_images: int = 8000, lr: float = 0.05, seed: int = 0, device: str = None):
    overrides = [f"trainer.epochs={epochs}", f"trainer.lr={lr}", f"trainer.seed={seed}",
                 f"data.train.num_images={train_images}", f"data.test.train_images={train_images}",
                 f"data.train.seed={seed}", f"data.test.seed={seed}", f"losses.0.seed={seed}",
                 f"trainer.log_every={max(train_images // 64, 1)}"]
    if device:
        overrides.append(f"trainer.device={device}")
    return validate(apply_overrides(yaml.safe_load(RECIPE), overrides))


def _baseline(name, scores, targets):
    from .metrics import multilabel_map, multilabel_topk

    return {"model": name, **multilabel_topk(scores, targets), **multilabel_map(scores, targets)}


def run(epochs: int = 8, batch_size: int = 64, train_images: int = 8000, test_images: int = 1000,
        lr: float = 0.05, seed: int = 0, device: str = None, out=print, run_dir=None) -> dict:
    from .trainer import evaluate, train

    r = recipe(epochs, train_images, lr, seed, device)
    r.trainer.batch_size, r.data.test["num_images"] = batch_size, test_images
    dev = resolve_device(device)
    out(f"fusedembed demo: multi-label training on the embedded scenes data ({dev})")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = run_dir or tmp
        train(r, run_dir, out=lambda line: out("  " + line))
        metrics = {"model": "tiny_cnn + GeM (trained)",
                   **evaluate(r, f"{run_dir}/last.pt", split="test", device=dev)}
    train_set = build("dataset", r.data.train, split="train")
    test_set = build("dataset", r.data.test, split="test")
    targets = test_set.labels.float()          # image view: item i is image i
    prior = train_set.labels.float().mean(0)
    gen = torch.Generator().manual_seed(seed)
    rows = [_baseline("random scores", torch.rand(targets.shape, generator=gen), targets),
            _baseline("train label frequency", prior.expand_as(targets).clone(), targets), metrics]
    cols = {"p@5": "P@5", "r@5": "R@5", "f1@5": "F1@5", "f1@10": "F1@10", "map": "mAP"}
    out(f"\ntest split, {len(test_set)} images, {targets.shape[1]} classes (percent)")
    out(f"{'model':<28}" + "".join(f"{c:>8}" for c in cols.values()))
    for row in rows:
        out(f"{row['model']:<28}" + "".join(f"{row[c]:8.1f}" for c in cols))
    return metrics


def main(argv=None) -> int:
    """``fusedembed demo multilabel [--epochs N] [--train-images N] [--device D]``."""
    import argparse

    p = argparse.ArgumentParser(prog="fusedembed demo multilabel", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    run(epochs=args.epochs, train_images=args.train_images, device=args.device,
        out=lambda line: print(line, flush=True))
    return 0
