"""The image branch: a registered image backbone, then FC-BN-ReLU, FC-BN-ReLU, dropout (the
authors' fc1 / fc1_1: 1×1 convs without bias, each followed by BN).

The backbone is any registered image backbone (torchvision ``resnet50`` by default, whose
weights load from ``pretrained_path``, a local file; ``tiny_cnn`` for the demo). Parameter
names are ``backbone.*`` and ``head.*``, so a recipe freezes or slows the CNN alone with an
``lr_mult`` glob such as ``image.backbone.*``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec


class ImageBranch(nn.Module):
    def __init__(self, backbone: spec("backbone"), dim: int = 2048, dropout: float = 0.5):
        super().__init__()
        if dim < 1:
            raise ValueError(f"image branch: dim must be >= 1, got {dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"image branch: dropout must be in [0, 1), got {dropout}")
        self.backbone = build("backbone", backbone)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def features(self, images: torch.Tensor) -> tuple:
        """``(bn, relu)``: fc1_1's BN output and its ReLU, (B, dim) each, before dropout."""
        bn = self.head(self.backbone(images))
        return bn, F.relu(bn)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.features(images)[1])
