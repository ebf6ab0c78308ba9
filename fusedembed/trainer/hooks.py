"""Trainer hooks: what happens around the steps (logging, NaN guard, evaluation, best-model
tracking, checkpoints, the progress display), one object each, in the style of detectron2's
``HookBase``. A hook sees the trainer as ``self.trainer``: ``trainer.state`` (the
:class:`~.state.StageState`), ``trainer.cfg`` (the stage's trainer section), ``trainer.flush()``.

A plugin adds its own with ``fusedembed_register_hooks`` and a recipe lists them under
``trainer.hooks: [{name: ..., **kwargs}]``; they run after the built-ins, in that order.
"""

import time
from typing import Dict, List

import torch

from .. import distributed as D
from ..errors import UserError
from .data import eval_loader


class Hook:
    """Base class; every method is optional. Order within an event is the order of the list."""

    trainer = None

    def before_stage(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_stage(self) -> None:
        pass

    def on_losses(self, steps: List[int], values: torch.Tensor) -> None:
        """The per-step mean losses since the last flush, on the CPU: (steps, 1 + losses)."""

    def on_eval(self, metrics: Dict[str, float]) -> None:
        pass


class NonFiniteLossError(UserError, FloatingPointError):
    def __init__(self, step: int, loss: str, value: float):
        self.step, self.loss, self.value = step, loss, value
        super().__init__(f"loss {loss!r} is {value} at step {step}; training stopped (the last "
                         f"checkpoint written before it is kept)")


class NaNGuard(Hook):
    """Stops at the first non-finite loss, naming the step and the loss. It runs on what each
    flush brings to the host, so it costs no sync of its own, and every checkpoint is preceded
    by a flush: no checkpoint holds weights a NaN has reached."""

    def on_losses(self, steps, values):
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        row = int((~finite).any(1).nonzero()[0])
        cols = (~finite[row]).nonzero().flatten().tolist()
        # Name a registered loss; the weighted total only when each loss was finite.
        bad = ([c for c in cols if c > 0] or cols)[0]
        culprit = self.trainer.loss_labels[bad].removeprefix("loss/") if bad else "total (weighted sum)"
        raise NonFiniteLossError(steps[row], culprit, float(values[row, bad]))


class MetricsLogger(Hook):
    """Flushes every ``log_every`` steps and at epoch end; writes one metrics.jsonl row (and
    a progress line) per flush: the mean losses, LR, epoch fraction and throughput."""

    def before_stage(self):
        self.t, self.samples = time.perf_counter(), 0

    def after_step(self):
        t = self.trainer
        self.samples += t.step_samples
        if t.state.step % t.cfg.log_every == 0:
            t.flush()

    def after_epoch(self):
        self.trainer.flush()

    def on_losses(self, steps, values):
        t, s = self.trainer, self.trainer.state
        elapsed = time.perf_counter() - self.t
        row = {"step": steps[-1], "stage": s.name,
               "epoch": round(s.epoch + s.batch / max(t.batches_per_epoch, 1), 4),
               **dict(zip(t.loss_labels, values.mean(0).tolist())), "lr": s.schedule.lr(),
               "samples_per_s": self.samples / elapsed if elapsed > 0 else None}
        t.log_row(row)
        self.t, self.samples = time.perf_counter(), 0


class Evaluator(Hook):
    """Runs the recipe's evaluators on ``data.val`` every ``eval_every`` epochs and at the
    stage's end. Under DDP an evaluator whose ``distributed`` attribute is true runs on every
    rank (each embeds its shard, :func:`fusedembed.distributed.shard_range`, and gathers);
    others run on rank 0 while the rest wait."""

    def __init__(self, evaluators, val_set):
        self.evaluators, self.val_set = evaluators, val_set

    def after_epoch(self):
        t = self.trainer
        if not self.evaluators or self.val_set is None:
            return
        if not (t.state.epoch % t.cfg.eval_every == 0 or t.stage_done):
            return
        metrics: Dict[str, float] = {}
        loader = eval_loader(self.val_set, t.stage_recipe)
        with t.autocast():
            for name, evaluator in self.evaluators:
                if not (t.world.is_main or getattr(evaluator, "distributed", False)):
                    continue
                for k, v in evaluator(t.state.model, loader, device=t.device).items():
                    if k in metrics:
                        raise ValueError(f"evaluator {name!r} reports {k!r}, which another evaluator "
                                         f"already reported")
                    metrics[k] = float(v)
        t.model.train()
        if t.world.is_main:
            t.last_eval = metrics
            t.log_row({"step": t.global_step, "stage": t.state.name, "epoch": t.state.epoch,
                       **{f"val/{k}": v for k, v in metrics.items()}})
            for h in t.hooks:
                h.on_eval(metrics)
        D.barrier(t.world)


class BestTracker(Hook):
    """Keeps the best value of ``trainer.best_metric`` and marks the epoch's checkpoint as the
    new best.pt when it improved."""

    def before_epoch(self):
        self.trainer.improved = False

    def on_eval(self, metrics):
        t, cfg = self.trainer, self.trainer.cfg
        if cfg.best_metric is None:
            return
        if cfg.best_metric not in metrics:
            raise KeyError(f"trainer.best_metric {cfg.best_metric!r} is not among the evaluators' "
                           f"metrics: {', '.join(metrics)}")
        value, old = metrics[cfg.best_metric], t.best.get("value")
        if old is None or (value > old if cfg.best_mode == "max" else value < old):
            t.best = {"metric": cfg.best_metric, "value": value, "step": t.global_step}
            t.improved = True


class Checkpointer(Hook):
    """last.pt every ``checkpoint_every`` steps and at every epoch end (best.pt too when the
    epoch improved), after a flush, on rank 0."""

    def after_step(self):
        every = self.trainer.cfg.checkpoint_every
        if every and self.trainer.state.step % every == 0:
            self.trainer.save()

    def after_epoch(self):
        self.trainer.save(best=self.trainer.improved)


class ProgressBar(Hook):
    """tqdm at a terminal, else plain lines to ``out`` (rank 0)."""

    def __init__(self, progress):
        self.progress = progress

    def before_stage(self):
        t = self.trainer
        total = t.cfg.epochs * t.steps_per_epoch if t.cfg.max_steps is None else t.cfg.max_steps
        self.progress.start(total, t.state.step, t.state.name)

    def after_step(self):
        self.progress.update()

    def after_stage(self):
        self.progress.close()


class StepCallback(Hook):
    """Calls ``fn(trainer)`` after every optimizer step (tests use it to interrupt a run)."""

    def __init__(self, fn):
        self.fn = fn

    def after_step(self):
        self.fn(self.trainer)


def build_hooks(entries) -> List[Hook]:
    """The recipe's ``trainer.hooks``, built from the registry."""
    from ..plugins import build
    hooks = []
    for entry in entries:
        hook = build("hook", entry)
        if not isinstance(hook, Hook):
            raise TypeError(f"trainer.hooks: {entry!r} built a {type(hook).__name__}, expected a "
                            f"fusedembed.trainer.Hook")
        hooks.append(hook)
    return hooks

