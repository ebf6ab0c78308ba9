"""timm models as backbones: the core plugin ``timm`` registers the family ``timm/*``, so any
model of an installed ``timm`` is a backbone by name (``timm/convnext_tiny``,
``timm/vit_small_patch16_224``), without listing the thousand of them.

The trunk is timm's ``features_only`` extractor (feature maps in NCHW whatever the model's own
layout, the last stage by default), then the recipe's pooling: ``avg`` or the fused ``gem``;
``pool: model`` keeps the model's own pooled features instead (``forward_features`` then its
head's pooling without the classifier: a ViT's class token). ``out_dim`` comes from the model.
Weights are read only from the local file ``pretrained_path`` (timm's
``pretrained_cfg_overlay=dict(file=...)``: timm then applies the model's own checkpoint
conversions and drops a classifier that does not fit); nothing is ever downloaded.
"""

import importlib.util
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from .hookspecs import hookimpl

INSTALL = "pip install 'fusedembed[timm]'"
POOLS = ("avg", "gem", "model")


def _installed() -> bool:
    return importlib.util.find_spec("timm") is not None


class TimmBackbone(nn.Module):
    """A timm model's trunk and the chosen pooling: images (B, 3, H, W) -> (B, out_dim)."""

    def __init__(self, model_name: str, pretrained_path: Optional[str] = None, pool: str = "avg",
                 gem_p: float = 3.0, out_index: int = -1, model_args: Optional[dict] = None):
        super().__init__()
        import timm

        from .builtin import _pool

        if pool not in POOLS:
            raise ValueError(f"timm/{model_name}: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        kwargs = dict(model_args or {})
        clash = sorted({"pretrained", "pretrained_cfg_overlay", "features_only", "num_classes"} & set(kwargs))
        if clash:
            raise ValueError(f"timm/{model_name}: model_args may not set {', '.join(clash)}; use "
                             f"pretrained_path and pool")
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"timm/{model_name}: pretrained_path {str(path)!r} is not a file "
                                        f"(weights are read from a local file only, never downloaded)")
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        if pool == "model":
            self.trunk = timm.create_model(model_name, num_classes=0, **kwargs)
            self.pool = nn.Identity()
            self.out_dim = int(getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features)
        else:
            self.trunk = timm.create_model(model_name, features_only=True, out_indices=(out_index,), **kwargs)
            self.pool = _pool(pool, gem_p)
            self.out_dim = int(self.trunk.feature_info.channels()[-1])
        self.model_name, self.pool_kind = model_name, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        if isinstance(features, (list, tuple)):       # features_only: one map per out_index
            features = features[-1]
        return self.pool(features)


def resolve(name: str):
    """any timm model (timm.list_models()), e.g. timm/convnext_tiny; weights from pretrained_path"""
    if not _installed():
        raise LookupError(f"timm is not installed ({INSTALL})")
    import timm

    from .registry import did_you_mean

    if not timm.is_model(name):
        raise LookupError(f"timm {timm.__version__} has no model {name!r}"
                          f"{did_you_mean(name, timm.list_models())}")

    def factory(pretrained_path: Optional[str] = None, pool: Literal["avg", "gem", "model"] = "avg",
                gem_p: float = 3.0, out_index: int = -1, model_args: Optional[dict] = None):
        return TimmBackbone(name, pretrained_path, pool, gem_p, out_index, model_args)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"timm {name}: features_only trunk + avg/GeM pooling (or the model's own)"
    return factory


@hookimpl
def fusedembed_register_backbones(register):
    what = resolve.__doc__
    register("*", resolve, description=what if _installed() else f"{what} -- timm is not installed: {INSTALL}")
