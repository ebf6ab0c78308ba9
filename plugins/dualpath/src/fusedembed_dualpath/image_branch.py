"""The image branch: a registered image backbone, then FC-BN-ReLU, FC-BN-ReLU, dropout (the
authors' fc1 / fc1_1: 1×1 convs without bias, each followed by BN).

The backbone is any registered image backbone (torchvision ``resnet50`` by default, whose
weights load from ``pretrained_path``, a local file; ``tiny_cnn`` for the demo). Parameter
names are ``backbone.*`` and ``head.*``, so a recipe freezes or slows the CNN alone with an
``lr_mult`` glob such as ``image.backbone.*``.

Two ways to read an image (``features`` / ``window_features``): the backbone's global average
pool, then the head (training, and test ``test_pool: global``); or, as the authors' test
(``test/extract_pic_feature_word2_plus_52.m``), the last conv map pooled by MatConvNet's
ResNet-50 ``pool5`` (a ``window`` × ``window`` average at stride 1, so a 224 crop's 7×7 map
is one window and a larger image gives several), the head applied to every window (fc1 /
fc1_1 are 1×1 convs) and its outputs summed over space.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fusedembed import build, spec


def _averages(pool: nn.Module) -> bool:
    return isinstance(pool, nn.Sequential) and isinstance(pool[0], nn.AdaptiveAvgPool2d)


def check_window_backbone(backbone: nn.Module) -> None:
    """Raises unless :func:`conv_map` can read the backbone and its own pooling is an average
    (so that one window over a training crop's whole map is what training saw)."""
    if hasattr(backbone, "layer4"):                      # torchvision ResNet
        pool = backbone.avgpool
    elif hasattr(backbone, "features"):                  # tiny_cnn
        pool = getattr(backbone, "pool", None)
    else:
        raise TypeError(f"dualpath: test_pool 'windows' needs the last conv map of a torchvision ResNet or "
                        f"tiny_cnn backbone, got {type(backbone).__name__}; use test_pool: global")
    if not _averages(pool):
        raise ValueError(f"dualpath: test_pool 'windows' averages the conv map as the authors' pool5 does, but "
                         f"the backbone pools with {type(pool).__name__}; use pool: avg or test_pool: global")


def conv_map(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's last conv map (B, C, h, w): its forward without the global pooling."""
    if hasattr(backbone, "layer4"):                      # torchvision ResNet
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
        return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    return backbone.features(images)                     # tiny_cnn


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

    def window_features(self, images: torch.Tensor, window: int) -> tuple:
        """``(bn, relu)`` summed over the ``window`` × ``window`` stride-1 average windows of
        the conv map (a side shorter than the window is pooled whole). The head sees each
        window as a row, which in eval mode (BN by its running statistics) is the authors'
        1×1 convs over the pooled map."""
        fmap = conv_map(self.backbone, images)
        pooled = F.avg_pool2d(fmap, (min(window, fmap.shape[2]), min(window, fmap.shape[3])), stride=1)
        b, c = pooled.shape[:2]
        bn = self.head(pooled.flatten(2).transpose(1, 2).reshape(-1, c)).view(b, -1, self.out_dim)
        return bn.sum(1), F.relu(bn).sum(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.features(images)[1])
