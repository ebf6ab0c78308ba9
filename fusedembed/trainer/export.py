"""Shareable weights: a checkpoint's model as ``model.safetensors`` plus its ``config.yaml``."""

from pathlib import Path

import yaml

from . import checkpoint as ckpt


def export(checkpoint, out_dir) -> Path:
    """``<out_dir>/model.safetensors`` (the model's state dict) and ``config.yaml`` (the resolved
    recipe the model was trained with)."""
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
