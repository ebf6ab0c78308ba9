"""Classification accuracy over a split (the trainer's evaluator interface)."""

import torch

from fusedembed.metrics import accuracy_from_ranks, class_ranks


class Accuracy:
    """Top-k accuracy (%) of ``logits`` against ``label`` (the core's class ranks: equal logits
    rank pessimistically, NaN logits are refused)."""

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"Accuracy: ks must be ints >= 1, got {ks}")

    @torch.no_grad()
    def __call__(self, model, loader, *, device) -> dict:
        model.eval()
        ranks = []
        for batch in loader:
            logits = model({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})["logits"]
            ranks.append(class_ranks(logits.float(), batch["label"]))
        if not ranks:
            raise ValueError("Accuracy: the split is empty")
        return accuracy_from_ranks(torch.cat(ranks), self.ks)
