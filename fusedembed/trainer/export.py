"""Sharing and evaluating trained weights."""

from pathlib import Path
from typing import Dict, Optional

import torch
import yaml

from ..registry import build as registry_build
from . import checkpoint as ckpt
from .data import eval_loader


def export(checkpoint, out_dir) -> Path:
    """``<out_dir>/model.safetensors`` (the model's state dict) and ``config.yaml``."""
    from safetensors.torch import save_file

    state = ckpt.load(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage: give every tensor its own copy.
    tensors = {k: v.detach().clone().contiguous() for k, v in state["model"].items()}
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "fusedembed", "stage": str(state["stage_name"])})
    (out_dir / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False), encoding="utf-8")
    return path


def default_device(device=None) -> torch.device:
    """``device`` as given, else CUDA when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(recipe, checkpoint, *, device=None, build=registry_build) -> torch.nn.Module:
    """The recipe's model with the checkpoint's weights, on ``device`` (default: CUDA when
    there is one), in eval mode."""
    state = ckpt.load(checkpoint)
    model = build("model", recipe.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"{checkpoint}: the weights do not fit the recipe's model: "
                                   f"{str(err).splitlines()[0]}") from None
    return model.to(default_device(device)).eval()


def evaluate(recipe, checkpoint, *, split: str = "test", device: Optional[str] = None,
             build=registry_build) -> Dict[str, float]:
    """Runs the recipe's evaluators on ``split`` with the checkpoint's model weights."""
    data_cfg = getattr(recipe.data, split)
    if data_cfg is None:
        raise ValueError(f"the recipe has no data.{split} dataset to evaluate on")
    if not recipe.evaluators:
        raise ValueError("the recipe lists no evaluators")
    dev = default_device(device)
    model = load_model(recipe, checkpoint, device=dev, build=build)
    loader = eval_loader(build("dataset", data_cfg, split=split), recipe)
    metrics = {}
    for e in recipe.evaluators:
        metrics.update({k: float(v) for k, v in build("evaluator", e)(model, loader, device=dev).items()})
    return metrics
