"""The example's components. Each is an ordinary class; the keyword arguments of __init__ are
what a recipe may set next to ``name`` (fusedembed checks them before calling)."""

import torch
from torch import nn
from torch.utils.data import Dataset

from fusedembed.distributed import gather_batch


class ConvNet(nn.Module):
    """Two conv-BN-ReLU layers and average pooling: images (B, 3, H, W) -> (B, out_dim)."""

    def __init__(self, width: int = 16, out_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_dim, 3, stride=2, padding=1), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.out_dim = out_dim  # the backbone contract: an int attribute with the feature size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class CenterLoss(nn.Module):
    """Mean squared distance of each embedding to its class centre (Wen et al. 2016).

    The centres are a parameter, so they are trained and checkpointed with the model; ``seen``
    is a buffer counting samples per class, an example of state a loss keeps.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.long))

    def forward(self, embedding: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.training:   # counts the global batch, so every DDP rank holds the same state
            self.seen += torch.bincount(gather_batch(label), minlength=self.seen.numel())
        return (embedding - self.centers[label]).pow(2).sum(dim=1).mean() / 2


class NoiseShapes(Dataset):
    """Deterministic toy images: class c is noise around colour c. Items are the documented
    dicts: {"image": (3, size, size) float, "label": int, "index": int}."""

    SEEDS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, split: str, length: int = 64, num_classes: int = 4, size: int = 16,
                 noise: float = 0.5):
        if split not in self.SEEDS:
            raise ValueError(f"split must be one of {', '.join(self.SEEDS)}, got {split!r}")
        g = torch.Generator().manual_seed(self.SEEDS[split])
        colours = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(42))
        self.labels = torch.randint(num_classes, (length,), generator=g)
        self.images = colours[self.labels] + noise * torch.randn(length, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}
