"""Using trained weights: the recipe's model loaded from a checkpoint, and its evaluators run."""

from typing import Dict, Optional

import torch

from ..devices import resolve_device
from ..errors import UsageError
from ..plugins import build
from . import checkpoint as ckpt
from .data import eval_loader


def load_model(recipe, checkpoint, *, device=None) -> torch.nn.Module:
    """The recipe's model with the checkpoint's weights, on ``device`` (default: the GPU when
    there is one), in eval mode."""
    state = ckpt.load(checkpoint)
    model = build("model", recipe.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"{checkpoint}: the weights do not fit the recipe's model: "
                                   f"{str(err).splitlines()[0]}") from None
    return model.to(resolve_device(device)).eval()


def evaluate(recipe, checkpoint, *, split: str = "test", device: Optional[str] = None) -> Dict[str, float]:
    """Runs the recipe's evaluators on ``split`` with the checkpoint's model weights."""
    data_cfg = getattr(recipe.data, split)
    if data_cfg is None:
        raise UsageError(f"the recipe has no data.{split} dataset to evaluate on; add one under data.{split} "
                         f"or pick another split with --split")
    if not recipe.evaluators:
        raise UsageError("the recipe lists no evaluators, so eval has nothing to compute; add one under "
                         "`evaluators:` (see `fusedembed list evaluators`)")
    dev = resolve_device(device)
    model = load_model(recipe, checkpoint, device=dev)
    loader = eval_loader(build("dataset", data_cfg, split=split), recipe)
    metrics = {}
    for e in recipe.evaluators:
        metrics.update({k: float(v) for k, v in build("evaluator", e)(model, loader, device=dev).items()})
    return metrics
