"""The trainer: ``train(recipe, run_dir)`` runs any recipe (stages, DDP under torchrun, AMP on
CUDA, exact resume); ``evaluate``, ``export`` and ``load_model`` work from its checkpoints;
``eval_loader(dataset, recipe)`` is the loader evaluators receive.

Recipe keys it reads (see :mod:`fusedembed.recipe` for types and defaults):

- ``model``: built once per stage; ``forward(batch) -> dict`` of outputs.
- ``losses: [{name, weight, inputs, **kwargs}]``: each loss's forward arguments are looked up
  in the model outputs, then the batch, under ``inputs[arg]`` or the argument's own name.
- ``data.train`` (required), ``data.val`` (evaluated during training), ``data.test`` (``eval``),
  ``data.sampler`` (a batch sampler; default: a seeded per-epoch shuffle, drop_last).
- ``evaluators``: run on ``data.val`` every ``eval_every`` epochs and at a stage's end (rank 0, or
  every rank on its shard for evaluators with ``distributed = True``).
- ``trainer``: epochs, lr, max_steps, batch_size (global), eval_batch_size, accumulate,
  grad_clip_norm, grad_clip_value, amp, channels_last, compile, device, workers, seed,
  deterministic, log_every, eval_every, checkpoint_every, best_metric, best_mode, bn_eval,
  loss_lr_mult, loss_weight_decay, optimizer.{name (sgd, adamw, rmsprop), momentum, nesterov, weight_decay, betas,
  alpha, eps, lr_mult, no_weight_decay, decay_norm_bias, weight_decay_mult}, scheduler.{name, step_size, milestones, gamma,
  min_lr, warmup_epochs, warmup, warmup_factor}, sync_bn (DDP: global BatchNorm statistics), dist_timeout_s
  (default 1800: a stalled rank ends the job), hooks (``[{name, **kwargs}]``: registered trainer hooks,
  after the built-ins).
- ``stages: [{name, <section>: ...}]``: run in order, each from the previous stage's weights
  with fresh optimizers; a loss whose label (its name, made unique) and state shapes match one
  of the previous stage keeps that state (a shared classifier, a learned margin).

Run directory: ``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``report.md``,
``loss.png``, ``eval.png``.
"""

from .checkpoint import CheckpointError
from .data import eval_loader
from .evaluate import evaluate, load_model
from .export import export
from .hooks import Hook, NonFiniteLossError
from .loop import Trainer, train
from .state import StageState

__all__ = ["CheckpointError", "Hook", "NonFiniteLossError", "StageState", "Trainer", "eval_loader", "evaluate",
           "export", "load_model", "train"]
