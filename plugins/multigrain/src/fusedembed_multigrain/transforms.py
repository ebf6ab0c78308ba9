"""MultiGrain's image transforms (``augmentations/transforms.py``).

Training, ``kind="full"``: RandomResizedCrop(size), horizontal flip, ColorJitter(0.3, 0.3,
0.3), PCA lighting 0.1 with AlexNet's ImageNet eigenvalues/vectors, clamp to [0, 1], then
ImageNet mean/std. ``kind="autoaugment"``: RandomResizedCrop, flip, torchvision's ImageNet
AutoAugment policy, then the same normalisation (the option). Test: ``"rect"`` resizes the
largest side to ``size`` (no crop, as finetune_p.py and the retrieval tests do);
``"center"`` resizes the short side to size / 0.875 and crops ``size``.

Inputs may be PIL images or float (3, H, W) tensors in [0, 1].
"""

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import functional as TF

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# AlexNet's PCA of ImageNet RGB (Krizhevsky et al. 2012), as the release's IN1K.EIG_*.
EIG_VALS = (0.2175, 0.0188, 0.0045)
EIG_VECS = ((-0.5675, 0.7192, 0.4009),
            (-0.5808, -0.0045, -0.8140),
            (-0.5836, -0.6948, 0.4203))
TRAIN_KINDS = ("full", "autoaugment", "flip")
TEST_KINDS = ("rect", "center", "resize")


def as_tensor(img) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else TF.to_tensor(img)


class Lighting:
    """AlexNet PCA lighting: adds Σ_k α_k λ_k v_k to every pixel, α_k ~ N(0, alpha_std)."""

    def __init__(self, alpha_std: float = 0.1, eig_vals=EIG_VALS, eig_vecs=EIG_VECS):
        self.alpha_std = float(alpha_std)
        self.eig_vals = torch.tensor(eig_vals).view(1, 3)
        self.eig_vecs = torch.tensor(eig_vecs)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alpha_std == 0:
            return img
        alpha = torch.randn(1, 3) * self.alpha_std
        rgb = (self.eig_vecs * alpha * self.eig_vals).sum(1)
        return img + rgb.view(3, 1, 1).to(img)


class Clamp:
    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.clamp(0.0, 1.0)


class ToUint8:
    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (img * 255).round().clamp(0, 255).to(torch.uint8)


class ToFloat:
    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.float() / 255


class ResizeLargest:
    """Resize so that the largest side is ``size`` (aspect kept)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        s = self.size / max(h, w)
        target = (max(1, round(h * s)), max(1, round(w * s)))
        if target == (h, w):
            return img
        return F.interpolate(img[None], size=target, mode="bilinear", align_corners=False,
                             antialias=True)[0]


def train_transform(kind: str = "full", size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                    jitter: float = 0.3, lighting: float = 0.1, normalize: bool = True):
    if kind not in TRAIN_KINDS:
        raise ValueError(f"train_transform: kind must be one of {TRAIN_KINDS}, got {kind!r}")
    steps = [as_tensor]
    if kind != "flip":
        steps.append(T.RandomResizedCrop(size, scale=tuple(scale), antialias=True))
    steps.append(T.RandomHorizontalFlip())
    if kind == "full":
        steps += [T.ColorJitter(jitter, jitter, jitter), Lighting(lighting), Clamp()]
    elif kind == "autoaugment":
        steps += [ToUint8(), T.AutoAugment(T.AutoAugmentPolicy.IMAGENET), ToFloat()]
    if normalize:
        steps.append(T.Normalize(MEAN, STD))
    return T.Compose(steps)


def eval_transform(kind: str = "rect", size: int = 224, normalize: bool = True):
    if kind not in TEST_KINDS:
        raise ValueError(f"eval_transform: kind must be one of {TEST_KINDS}, got {kind!r}")
    steps = [as_tensor]
    if kind == "rect":
        steps.append(ResizeLargest(size))
    elif kind == "center":
        steps += [T.Resize(round(size / 0.875), antialias=True), T.CenterCrop(size)]
    else:
        steps.append(T.Resize((size, size), antialias=True))
    if normalize:
        steps.append(T.Normalize(MEAN, STD))
    return T.Compose(steps)


def crop_box(img: torch.Tensor, box: Tuple[float, float, float, float]) -> torch.Tensor:
    """The (x0, y0, x1, y1) pixel box of a (3, H, W) image (revisited Oxford/Paris query crop)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = img.shape[-2:]
    x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
    return img[..., y0:max(y0 + 1, min(y1, h)), x0:max(x0 + 1, min(x1, w))]
