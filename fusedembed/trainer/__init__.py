"""The trainer: ``train(recipe, run_dir)`` runs any recipe (stages, DDP under torchrun, AMP on
CUDA, exact resume); ``evaluate`` and ``export`` work from its checkpoints."""

from .checkpoint import CheckpointError
from .export import evaluate, export
from .loop import NonFiniteLossError, Trainer, train

__all__ = ["CheckpointError", "NonFiniteLossError", "Trainer", "evaluate", "export", "train"]
