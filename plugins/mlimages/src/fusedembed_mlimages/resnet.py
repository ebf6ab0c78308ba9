"""The released model's trunk (``models/resnet.py``): a pre-activation ResNet (He et al. 2016,
identity mappings) with bottleneck units BN-ReLU-conv 1x1, BN-ReLU-conv 3x3, BN-ReLU-conv 1x1,
a final BN-ReLU-global average pool -> 2048-d features.

As the released code builds it: a 7x7/2 stem conv with no pooling after it (every stage's
first unit has stride 2, the first included: 224 -> 112 -> 56 -> 28 -> 14 -> 7), the stride on
the 3x3 conv; a stage's first unit projects its shortcut with its own BN-ReLU and a 1x1 conv
(the residual path has a separate BN-ReLU on the same input); convs have no bias; convs are
initialised as TF's variance_scaling (truncated normal, std sqrt(1 / fan_in)); BN gamma 1,
beta 0. Stage widths 256 / 512 / 1024 / 2048 with bottlenecks a quarter as wide; depth 50 /
101 / 152 = units [3, 4, 6, 3] / [3, 4, 23, 3] / [3, 8, 36, 3].

Module names follow torchvision's ResNet (``conv1``, ``layer1.0.conv2``, ``layer1.0.downsample.0``),
so every conv weight has the name and the shape it has in ``torchvision.models.resnet101``;
the BNs (``bn1..bn3`` before each conv, ``shortcut_bn``, ``final_bn``) are the pre-activation
ones. BN ``bn_decay`` / ``bn_eps`` are TF's terms: the released code's 0.997 / 1e-5 by
default, the paper's 0.9 / 1e-3 as the option (PyTorch momentum = 1 - decay).
"""

import math
from typing import List, Literal, Optional

import torch
from torch import nn

from fusedembed.builtin import load_state_dict_file

DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
INPUT_RANGES = ("minus_one_to_one", "unit", "imagenet")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def _tf_variance_scaling_(weight: torch.Tensor) -> None:
    """tf.variance_scaling_initializer(): a normal truncated at 2 std (draws outside are drawn
    again, as TF's truncated_normal does), std = sqrt(1 / fan_in) / 0.8796 so that the
    truncated distribution has variance 1 / fan_in."""
    if weight.is_meta:              # built for its structure only (no values)
        return
    fan_in = weight.shape[1] * weight[0, 0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    weight.normal_(0.0, std)
    outside = weight.abs() > 2 * std
    while bool(outside.any()):
        weight[outside] = torch.randn(int(outside.sum()), dtype=weight.dtype) * std
        outside = weight.abs() > 2 * std


class PreActBottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, project: bool, bn):
        super().__init__()
        mid = out_ch // 4
        if project:
            self.shortcut_bn = bn(in_ch)
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False))
        else:
            self.shortcut_bn, self.downsample = None, None
        self.bn1, self.conv1 = bn(in_ch), nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2, self.conv2 = bn(mid), nn.Conv2d(mid, mid, 3, stride, padding=1, bias=False)
        self.bn3, self.conv3 = bn(mid), nn.Conv2d(mid, out_ch, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(self.relu(self.shortcut_bn(x)))
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return y + shortcut


class PreActResNet(nn.Module):
    """(B, 3, H, W) images (in ``input_range``) -> (B, ``out_dim``) features."""

    def __init__(self, depth: int = 101, blocks: Optional[List[int]] = None, width: int = 64,
                 bn_decay: float = 0.997, bn_eps: float = 1e-5, input_range: str = "minus_one_to_one"):
        super().__init__()
        if blocks is None:
            if depth not in DEPTHS:
                raise ValueError(f"preact_resnet: depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
            blocks = DEPTHS[depth]
        if len(blocks) != 4 or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"preact_resnet: blocks must be 4 ints >= 1 (units per stage), got {blocks!r}")
        if width < 1:
            raise ValueError(f"preact_resnet: width must be >= 1, got {width}")
        if not (0 <= bn_decay < 1):
            raise ValueError(f"preact_resnet: bn_decay must be in [0, 1), got {bn_decay}")
        if not (bn_eps > 0 and math.isfinite(bn_eps)):
            raise ValueError(f"preact_resnet: bn_eps must be > 0, got {bn_eps}")
        if input_range not in INPUT_RANGES:
            raise ValueError(f"preact_resnet: input_range must be one of {', '.join(INPUT_RANGES)}, "
                             f"got {input_range!r}")
        self.blocks, self.width, self.input_range = list(blocks), width, input_range

        def bn(c):
            return nn.BatchNorm2d(c, eps=bn_eps, momentum=1 - bn_decay)

        self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
        in_ch = width
        for i, n in enumerate(self.blocks):
            out_ch = width * 4 * 2 ** i
            units = [PreActBottleneck(in_ch if u == 0 else out_ch, out_ch, 2 if u == 0 else 1, u == 0, bn)
                     for u in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            in_ch = out_ch
        self.final_bn = bn(in_ch)
        self.relu = nn.ReLU(inplace=False)
        self.out_dim = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _tf_variance_scaling_(m.weight)
        if input_range == "imagenet":
            self.register_buffer("_mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("_std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def to_minus_one_to_one(self, x: torch.Tensor) -> torch.Tensor:
        """The released model's input scale from the one ``input_range`` names."""
        if self.input_range == "unit":
            return x * 2 - 1
        if self.input_range == "imagenet":
            return (x * self._std + self._mean) * 2 - 1
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.to_minus_one_to_one(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.relu(self.final_bn(x)).mean(dim=(2, 3))


def load_trunk(model: nn.Module, path) -> None:
    """Loads a trunk's weights from a local file: a converted release (``convert``: trunk keys +
    ``fc.*``), an exported or trained fusedembed model (``backbone.*`` of an ML-Images
    classifier, a trainer checkpoint's ``model``) or a bare trunk state dict. The head is
    ignored; any other mismatch is an error naming up to five keys."""
    state = load_state_dict_file(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and v.shape != expected[k].shape]
    problems = [f"{what} {items[:5]}{'...' if len(items) > 5 else ''}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)) if items]
    if problems:
        raise ValueError(f"pretrained_path {str(path)!r} does not match this preact_resnet "
                         f"(blocks={model.blocks}, width={model.width}): {'; '.join(problems)}")
    model.load_state_dict(state)


def preact_resnet101(depth: int = 101, blocks: Optional[List[int]] = None, width: int = 64,
                     bn_decay: float = 0.997, bn_eps: float = 1e-5,
                     input_range: Literal["minus_one_to_one", "unit", "imagenet"] = "minus_one_to_one",
                     pretrained_path: Optional[str] = None) -> PreActResNet:
    """Pre-activation ResNet-101 of ML-Images (depth 50/101/152; ``blocks``/``width`` for small
    nets), 2048-d; weights from a local file (a converted release or a trained model)."""
    model = PreActResNet(depth, blocks, width, bn_decay, bn_eps, input_range)
    if pretrained_path:
        load_trunk(model, pretrained_path)
    return model
