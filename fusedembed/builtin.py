"""The built-in plugin: generic components only (the core knows no paper).

Loaded like any third-party plugin, through the entry point ``builtin = "fusedembed.builtin"``.
torchvision is imported inside the factories so that listing plugins stays fast.
"""

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .hookspecs import hookimpl
from .nn import GeM
from .plugins import build
from .registry import spec

RESNET_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
POOLS = ("avg", "gem")


def _pool(pool: str, gem_p: float) -> nn.Module:
    if pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if pool == "gem":
        return GeM(p=gem_p)
    raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")


def load_state_dict_file(path) -> dict:
    """Reads weights from a local ``.safetensors`` or torch file (``weights_only``): a state
    dict, or one wrapped under ``"state_dict"``/``"model"``; a DDP ``module.`` prefix is dropped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {str(path)!r} is not a file (weights are read "
                                f"from a local file only, never downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, path, skip=("fc.",), own=()) -> None:
    """Strict load that tolerates the file's classifier (``skip``) and the parameters this
    backbone adds itself (``own``, e.g. the GeM exponent); mismatches are named, up to five."""
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(skip)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(own)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and v.shape != expected[k].shape]
    problems = [f"{what} {items[:5]}{'...' if len(items) > 5 else ''}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)) if items]
    if problems:
        raise ValueError(f"{path} does not match {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def _resnet(arch: str):
    def factory(pretrained_path: Optional[str] = None, pool: str = "avg", gem_p: float = 3.0):
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        # Keep torchvision's module names so its checkpoints load as they are; the pooling
        # module replaces avgpool and the classifier goes (forward's flatten is then a no-op).
        model.avgpool = _pool(pool, gem_p)
        model.fc = nn.Identity()
        if pretrained_path:
            _load_into(model, pretrained_path, own=("avgpool.",))
        model.out_dim = RESNET_DIMS[arch]
        return model

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = (f"torchvision {arch} trunk -> {RESNET_DIMS[arch]}-d features, avg or GeM "
                       f"pooling, weights from a local file")
    return factory


class TinyCNN(nn.Module):
    """Small conv net for CPU demos and tests: stride-2 conv-BN-ReLU stages, then pooling."""

    def __init__(self, width: int = 16, depth: int = 3, in_channels: int = 3, pool: str = "avg",
                 gem_p: float = 3.0):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"TinyCNN: width and depth must be >= 1, got width={width}, depth={depth}")
        layers, c_in = [], in_channels
        for i in range(depth):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = _pool(pool, gem_p)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


class ImageEmbedding(nn.Module):
    """Backbone, optional linear projection to ``embed_dim``, optional classifier.

    forward(batch) -> {"features", "embedding" (L2-normalised when ``normalize``), "logits"
    (when ``num_classes``)}; the image is read from ``batch[input_key]``.
    """

    def __init__(self, backbone: spec("backbone"), embed_dim: Optional[int] = None, num_classes: Optional[int] = None,
                 normalize: bool = True, input_key: str = "image"):
        super().__init__()
        self.backbone = build("backbone", backbone)
        dim = self.backbone.out_dim
        self.proj = nn.Linear(dim, embed_dim) if embed_dim else nn.Identity()
        dim = embed_dim or dim
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None
        self.normalize, self.input_key, self.out_dim = normalize, input_key, dim

    def forward(self, batch) -> dict:
        features = self.backbone(batch[self.input_key])
        embedding = self.proj(features)
        out = {"features": features,
               "embedding": F.normalize(embedding, dim=-1) if self.normalize else embedding}
        if self.classifier is not None:
            out["logits"] = self.classifier(embedding)
        return out


class CrossEntropy(nn.Module):
    """Softmax cross-entropy of ``logits`` (B, C) against int class ids ``label`` (B,)."""

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100):
        super().__init__()
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)


class BinaryCrossEntropy(nn.Module):
    """Multi-label sigmoid cross-entropy of ``logits`` (B, C) against ``labels`` (B, C) in [0, 1]."""

    def __init__(self, pos_weight: Optional[float] = None):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype),
                                                  pos_weight=self.pos_weight)


@hookimpl
def fusedembed_register_backbones(register):
    for arch in RESNET_DIMS:
        register(arch, _resnet(arch))
    register("tiny_cnn", TinyCNN)


@hookimpl
def fusedembed_register_models(register):
    register("image_embedding", ImageEmbedding)


@hookimpl
def fusedembed_register_losses(register):
    register("cross_entropy", CrossEntropy)
    register("bce", BinaryCrossEntropy)


@hookimpl
def fusedembed_register_datasets(register):
    from . import data

    register("scenes", data.scenes)
    register("karpathy", data.karpathy)
    register("caption_folder", data.caption_folder)


@hookimpl
def fusedembed_register_evaluators(register):
    register("multilabel", MultiLabelEvaluator)


class MultiLabelEvaluator:
    """P@k / R@k / F1@k and mAP of ``logits`` against the batch's ``labels``."""

    def __init__(self, ks=(5, 10), output: str = "logits", threshold: float = 0.5):
        self.ks, self.output, self.threshold = tuple(ks), output, threshold

    @torch.no_grad()
    def __call__(self, model, loader, *, device) -> dict:
        from .metrics import multilabel_map, multilabel_topk

        model.eval()
        scores, targets = [], []
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            scores.append(model(batch)[self.output].float().cpu())
            targets.append(batch["labels"].float().cpu())
        scores, targets = torch.cat(scores), torch.cat(targets)
        return {**multilabel_topk(scores, targets, ks=self.ks, threshold=self.threshold),
                **multilabel_map(scores, targets, threshold=self.threshold)}
