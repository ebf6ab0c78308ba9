"""Classification accuracy over a split (the trainer's evaluator interface)."""

import torch


class Accuracy:
    """Top-k accuracy (%) of ``logits`` against ``label``."""

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"Accuracy: ks must be ints >= 1, got {ks}")

    @torch.no_grad()
    def __call__(self, model, loader, *, device) -> dict:
        model.eval()
        hits, total = dict.fromkeys(self.ks, 0), 0
        for batch in loader:
            logits = model({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})["logits"]
            label = batch["label"].to(logits.device)
            top = logits.topk(min(max(self.ks), logits.shape[1]), 1).indices
            for k in self.ks:
                hits[k] += int((top[:, :k] == label[:, None]).any(1).sum())
            total += len(label)
        if not total:
            raise ValueError("Accuracy: the split is empty")
        return {f"top{k}": 100.0 * hits[k] / total for k in self.ks}
