"""The paper's image CNNs: AlexNet and VGG-16 (the RCNN detector's network) as backbones whose
output is the 4096-d fc7 activation, the region feature CNN(I_b). Weights come from a local
torchvision state-dict file only (``pretrained_path``); the 1000-way fc8 is dropped. Their
``features`` module is the convolutional trunk that ``region_mode: roi`` pools boxes from.
"""

from typing import Optional

from torch import nn

from fusedembed.builtin import load_state_dict_file


def _fc7(arch: str, pretrained_path: Optional[str]) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained_path:
        state = {k: v for k, v in load_state_dict_file(pretrained_path).items() if not k.startswith("classifier.6.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.6.")]
        if missing or unexpected:
            raise ValueError(f"alignment/{arch}: {pretrained_path} does not match torchvision {arch}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.classifier[6] = nn.Identity()         # keep fc6, fc7 (with their ReLU and dropout)
    model.out_dim = 4096
    return model


def alexnet(pretrained_path: Optional[str] = None) -> nn.Module:
    """torchvision AlexNet -> 4096-d fc7 features, weights from a local file."""
    return _fc7("alexnet", pretrained_path)


def vgg16(pretrained_path: Optional[str] = None) -> nn.Module:
    """torchvision VGG-16 -> 4096-d fc7 features (the RCNN network), weights from a local file."""
    return _fc7("vgg16", pretrained_path)
