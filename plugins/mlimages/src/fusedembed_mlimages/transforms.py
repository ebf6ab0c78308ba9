"""Image preprocessing of ML-Images, both versions, as named presets (torchvision transforms v2
functionals; the colour operations are written out with TensorFlow's semantics).

Training (``data_processing/image_preprocessing.py`` for ``code`` and ``finetune``; paper
Sec. 3.1.2 for ``paper``): a random crop drawn the way ``tf.image.sample_distorted_bounding_box``
draws one for a whole-image box (aspect ratio uniform in its range, height uniform among those
whose area fits, position uniform; the whole image after 100 failed attempts), resized to
``size`` x ``size`` (bilinear, no antialiasing, as ``tf.image.resize_images``), a horizontal
flip with probability 0.5, a rotation uniform in [-45°, 45°] (nearest, black corners, as
``tf.contrib.image.rotate``) and a colour distortion (brightness ±32/255 added, saturation and
contrast x[0.5, 1.5], hue ±0.2 of the circle; contrast per channel around its mean, saturation
and hue in HSV; in one of two orders), then clipped to [0, 1] and scaled to [-1, 1].

=========== ================= ============= ================ ===============================
preset      crop area         covers >=     aspect (w / h)   rotation / colour
=========== ================= ============= ================ ===============================
``code``    [0.7, 1]          0.7           [0.75, 1.33]     one draw of 3 branches: rotation
                                                             + colour order A (1/3), colour
                                                             order B (1/3), neither (1/3)
``finetune``[0.05, 1]         0             [0.75, 1.33]     as ``code`` (finetune.py)
``paper``   [0.5, 1]          0.5           [3/4, 4/3]       independent: rotation p = 0.25,
                                                             colour p = 0.5 (order A or B)
``flip``    none (resize)     -             -                flip only (the scenes demo)
=========== ================= ============= ================ ===============================

The released code's comments say 1/4 and 1/2 of the images; its ``thread_id`` is drawn from
{0, 1, 2}, so it is 1/3 and 2/3, and the rotated third is always colour-distorted (order A).
The aspect range is the code's ``[0.75, 1.33]``, not 4/3.

Evaluation: ``central_crop`` (the code: the central 80% of height and width, then resized to
``size``) or ``resize`` (the whole image). Every output is float32 (3, size, size) in [-1, 1].
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["TRAIN_PRESETS", "EVAL_PRESETS", "TrainTransform", "EvalTransform", "make_transform", "sample_crop"]


@dataclass(frozen=True)
class Preset:
    crop_area: Optional[Tuple[float, float]]      # None: no crop, the whole image is resized
    min_covered: float = 0.0
    aspect: Tuple[float, float] = (0.75, 1.33)
    branches: bool = True                          # the code's 3-way draw; else independent draws
    rotate_p: float = 0.0                          # independent draws only
    colour_p: float = 0.0


TRAIN_PRESETS = {
    "code": Preset((0.7, 1.0), 0.7),
    "finetune": Preset((0.05, 1.0), 0.0),
    "paper": Preset((0.5, 1.0), 0.5, (3 / 4, 4 / 3), branches=False, rotate_p=0.25, colour_p=0.5),
    "flip": Preset(None, branches=False),
}
EVAL_PRESETS = {"central_crop": 0.8, "resize": None}

MAX_ANGLE = 45.0
BRIGHTNESS = 32 / 255
SATURATION = CONTRAST = (0.5, 1.5)
HUE = 0.2


@dataclass
class Colour:
    order: int              # 0: brightness, saturation, hue, contrast; 1: brightness, contrast, saturation, hue
    brightness: float
    saturation: float
    hue: float
    contrast: float


@dataclass
class Params:
    box: Tuple[int, int, int, int]         # top, left, height, width in the input image
    flip: bool
    angle: Optional[float]                 # degrees, counter-clockwise
    colour: Optional[Colour]


def _uniform(lo: float, hi: float, g) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(lo: int, hi: int, g) -> int:
    """Uniform in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def sample_crop(height: int, width: int, area: Tuple[float, float], min_covered: float,
                aspect: Tuple[float, float], attempts: int = 100, generator=None) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering an area fraction in ``area`` and at least
    ``min_covered`` of the image, with w / h in ``aspect`` (up to rounding to whole pixels);
    the whole image when ``attempts`` draws fail."""
    full = height * width
    lo = max(area[0], min_covered) * full
    hi = area[1] * full
    for _ in range(attempts):
        ratio = _uniform(aspect[0], aspect[1], generator)
        h_min = math.ceil(math.sqrt(lo / ratio))
        h_max = min(math.floor(math.sqrt(hi / ratio)), height, math.floor((width + 0.5) / ratio))
        if h_min > h_max or h_max < 1:
            continue
        h = _randint(h_min, h_max, generator)
        w = min(int(round(h * ratio)), width)
        if w < 1 or not lo <= w * h <= hi:
            continue
        return _randint(0, height - h, generator), _randint(0, width - w, generator), h, w
    return 0, 0, height, width


def _colour(g, order: Optional[int] = None) -> Colour:
    order = _randint(0, 1, g) if order is None else order
    return Colour(order, _uniform(-BRIGHTNESS, BRIGHTNESS, g), _uniform(*SATURATION, g),
                  _uniform(-HUE, HUE, g), _uniform(*CONTRAST, g))


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6,
                    torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], -3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    h6 = (h % 1.0) * 6
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    i = i.long() % 6
    table = torch.stack([torch.stack(c, 0) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)   # (6, 3, H, W)
    return table.gather(0, i.unsqueeze(0).unsqueeze(0).expand(1, 3, *i.shape)).squeeze(0)


def distort_colour(image: torch.Tensor, c: Colour) -> torch.Tensor:
    """TensorFlow's random_brightness / _saturation / _hue / _contrast with the drawn values, in
    the drawn order; HSV is taken of the image clipped to [0, 1]; the result is not clipped."""
    def saturation(x):
        hsv = rgb_to_hsv(x.clamp(0, 1))
        hsv[1] = (hsv[1] * c.saturation).clamp(0, 1)
        return hsv_to_rgb(hsv)

    def hue(x):
        hsv = rgb_to_hsv(x.clamp(0, 1))
        hsv[0] = (hsv[0] + c.hue) % 1.0
        return hsv_to_rgb(hsv)

    def contrast(x):
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return (x - mean) * c.contrast + mean

    x = image + c.brightness
    for op in ((saturation, hue, contrast) if c.order == 0 else (contrast, saturation, hue)):
        x = op(x)
    return x


def _to_float(image: torch.Tensor) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"ML-Images transform: expected an RGB (3, H, W) image, got shape {tuple(image.shape)}")
    return TF.to_dtype(image, torch.float32, scale=True)


def _resize(image: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=antialias)


class TrainTransform:
    """A training preset (see the module table); ``size`` the output side, ``antialias`` off as
    in TF 1's resize."""

    def __init__(self, preset: str = "code", size: int = 224, antialias: bool = False):
        if preset not in TRAIN_PRESETS:
            raise ValueError(f"train transform must be one of {', '.join(TRAIN_PRESETS)}, got {preset!r}")
        if size < 8:
            raise ValueError(f"train transform: size must be >= 8, got {size}")
        self.name, self.preset, self.size, self.antialias = preset, TRAIN_PRESETS[preset], size, antialias

    def sample(self, height: int, width: int, generator=None) -> Params:
        """The random choices for one image (``generator``: torch's global RNG when None)."""
        p, g = self.preset, generator
        box = (sample_crop(height, width, p.crop_area, p.min_covered, p.aspect, generator=g)
               if p.crop_area is not None else (0, 0, height, width))
        flip = bool(torch.rand((), generator=g) < 0.5)
        angle = colour = None
        if p.branches:
            branch = _randint(0, 2, g)
            if branch == 0:
                angle = _uniform(-MAX_ANGLE, MAX_ANGLE, g)
            if branch in (0, 1):
                colour = _colour(g, order=branch)
        else:
            if p.rotate_p and bool(torch.rand((), generator=g) < p.rotate_p):
                angle = _uniform(-MAX_ANGLE, MAX_ANGLE, g)
            if p.colour_p and bool(torch.rand((), generator=g) < p.colour_p):
                colour = _colour(g)
        return Params(box, flip, angle, colour)

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        x = _to_float(image)
        top, left, h, w = params.box
        x = _resize(TF.crop(x, top, left, h, w), self.size, self.antialias)
        if params.flip:
            x = TF.horizontal_flip(x)
        if params.angle is not None:
            x = TF.rotate(x, params.angle, interpolation=InterpolationMode.NEAREST, expand=False, fill=0.0)
        if params.colour is not None:
            x = distort_colour(x, params.colour)
        return (x.clamp(0, 1) - 0.5) * 2

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.sample(image.shape[-2], image.shape[-1]))

    def __repr__(self):
        return f"TrainTransform({self.name!r}, size={self.size})"


class EvalTransform:
    """``central_crop``: the central 80% of each side (TF's central_crop), resized; ``resize``:
    the whole image resized. Scaled to [-1, 1]."""

    def __init__(self, preset: str = "central_crop", size: int = 224, antialias: bool = False):
        if preset not in EVAL_PRESETS:
            raise ValueError(f"eval transform must be one of {', '.join(EVAL_PRESETS)}, got {preset!r}")
        self.name, self.fraction, self.size, self.antialias = preset, EVAL_PRESETS[preset], size, antialias

    def box(self, height: int, width: int) -> Tuple[int, int, int, int]:
        if self.fraction is None:
            return 0, 0, height, width
        top, left = int((height - height * self.fraction) / 2), int((width - width * self.fraction) / 2)
        return top, left, height - 2 * top, width - 2 * left

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = _to_float(image)
        top, left, h, w = self.box(x.shape[-2], x.shape[-1])
        return (_resize(TF.crop(x, top, left, h, w), self.size, self.antialias).clamp(0, 1) - 0.5) * 2

    def __repr__(self):
        return f"EvalTransform({self.name!r}, size={self.size})"


def make_transform(split: str, train_preset: str, eval_preset: str, size: int):
    """The training preset for the train split, the evaluation one for the others."""
    return TrainTransform(train_preset, size) if split == "train" else EvalTransform(eval_preset, size)
