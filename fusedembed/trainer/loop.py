"""The training loop: one recipe, its stages, a small ``run_step`` and hooks around it.

A stage builds its objects (model, losses, optimizers, loader, evaluators), loads a resumed
:class:`~.state.StageState` into them and only then restores the random generators, so
nothing drawn at construction shifts the stream. Each optimizer step is ``run_step`` on
``accumulate`` micro-batches; what happens around it (logging, NaN guard, evaluation, best
model, checkpoints, progress) is a :class:`~.hooks.Hook`. Loss values stay on the device and
reach the host once per flush (every ``log_every`` steps, before each checkpoint, at epoch end).
"""

import contextlib
import gc
import math
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .. import distributed as D
from ..config import save_recipe, stage_recipes, to_dict
from ..devices import resolve_device
from ..plugins import build
from ..recipe import Recipe
from . import checkpoint as ckpt
from .data import to_device, train_loader
from .hooks import (
    BestTracker,
    Checkpointer,
    Evaluator,
    MetricsLogger,
    NaNGuard,
    NonFiniteLossError,
    ProgressBar,
    StepCallback,
    build_hooks,
)
from .logging import MetricsLog, Progress
from .losses import build_losses, carry_loss_state, loss_states, loss_values
from .optim import Schedule, build_optimizers
from .resume import check_resumable
from .rng import rng_state, set_rng_state
from .state import StageState

__all__ = ["NonFiniteLossError", "Trainer", "train"]


def amp_dtype(cfg, device) -> Optional[torch.dtype]:
    """bf16 (or fp16) autocast on CUDA only; CPU trains in float32."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


def set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """Trains ``recipe`` into ``run_dir`` with the current registries. ``resume`` is a checkpoint
    path; ``on_step(trainer)`` runs after every optimizer step (tests use it to interrupt a run)."""

    def __init__(self, recipe: Recipe, run_dir, *, resume=None, out: Callable[[str], None] = print,
                 on_step: Optional[Callable] = None):
        self.recipe, self.run_dir, self.out, self.on_step = recipe, Path(run_dir), out, on_step
        self.stages = stage_recipes(recipe)
        self.resume_state = None
        if resume is not None:
            self.resume_state = ckpt.load(resume, resume=True)
            check_resumable(self.resume_state, recipe, [n for n, _ in self.stages], resume)
        self.device = resolve_device(recipe.trainer.device, what="trainer.device")
        self.world = D.init(self.device.type, timeout_s=recipe.trainer.dist_timeout_s)
        self.device = resolve_device(recipe.trainer.device, local_rank=self.world.local_rank,
                                     what="trainer.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.world.is_main
        self.progress = Progress(self.main, out)
        r = self.resume_state
        if r is not None and self.device.type == "cpu" and r.get("threads", torch.get_num_threads()) \
                != torch.get_num_threads():
            # CPU kernels split their reductions by thread: another count sums in another order
            warnings.warn(f"{resume}: written with {r['threads']} intra-op threads, resumed with "
                          f"{torch.get_num_threads()}: the run continues, but not bit-identical to an "
                          f"uninterrupted one (set OMP_NUM_THREADS={r['threads']} for that)", stacklevel=2)
        self.best = dict(r["best"]) if r else {"value": None, "step": None}
        self.global_step = int(r.get("global_step", 0)) if r else 0
        self.last_eval: Dict[str, float] = {}
        self.state: Optional[StageState] = None

    # -- public ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, float]:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.run_dir)
            save_recipe(self.recipe, self.run_dir)
        # a resumed run drops the rows logged after its checkpoint: no step appears twice
        self.log = MetricsLog(self.run_dir, enabled=self.main,
                              resume_step=self.global_step if self.resume_state else None)
        finished = False
        try:
            prev = None
            start = int(self.resume_state["stage"]) if self.resume_state else 0
            for si, (name, recipe) in enumerate(self.stages):
                if si >= start:
                    resume = self.resume_state if si == start else None
                    prev = self._run_stage(si, name, recipe, resume, prev)   # (weights, loss states)
            if self.main:
                from .report import write_report
                write_report(self.run_dir, self.recipe, self.log.read(), self.best)
            finished = True
            return self.last_eval
        finally:
            self.progress.close()
            self.log.close()
            D.shutdown(self.world, clean=finished)   # after a failure a peer may never reach a barrier

    def run_step(self, group: List[dict]) -> torch.Tensor:
        """One optimizer step on ``group`` (``accumulate`` micro-batches): forward, losses,
        backward, clip, step. Returns the mean [total, *losses] on the device."""
        s, cfg, scaler = self.state, self.cfg, self.state.scaler
        rows = []
        for k, batch in enumerate(group):
            batch = to_device(batch, self.device, self.channels_last)
            last = k == len(group) - 1
            with contextlib.nullcontext() if last or not self.world.distributed else self.model.no_sync():
                with self.autocast():
                    outputs = self.model(batch)
                    values = loss_values(s.losses, self.terms, outputs, batch)
                    total = self._weighted_sum(values)
                scaled = total / len(group) if len(group) > 1 else total
                (scaler.scale(scaled) if scaler else scaled).backward()
            rows.append(torch.stack([total.detach(), *(v.detach() for v in values)]))
        if self.loss_params and self.world.distributed:     # DDP averages the model's grads only
            for p in self.loss_params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world.size
        if scaler is not None:
            for opt in s.optimizers.values():
                scaler.unscale_(opt)
        if cfg.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.trainable, cfg.grad_clip_value)
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip_norm)
        for opt in s.optimizers.values():
            scaler.step(opt) if scaler is not None else opt.step()
            opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()
        s.schedule.step()
        return rows[0] if len(rows) == 1 else torch.stack(rows).mean(0)

    def _weighted_sum(self, values: List[torch.Tensor]) -> torch.Tensor:
        # no kernels for weights of 1 or a start of 0: they are launches on every step
        total = None
        for term, v in zip(self.terms, values):
            v = v if term.weight == 1.0 else term.weight * v
            total = v if total is None else total + v
        return total

    def flush(self) -> None:
        """Brings the losses of the steps since the last flush to the host (one sync, the mean
        over ranks) and hands them to the hooks (NaN guard, metrics)."""
        if not self.history:
            return
        steps = [st for st, _ in self.history]
        values = D.mean(torch.stack([v for _, v in self.history]), self.world).cpu()
        self.history.clear()
        for h in self.hooks:
            h.on_losses(steps, values)

    def log_row(self, row: dict) -> None:
        self.log.write(row)
        self.progress.log({k: v for k, v in row.items() if k != "stage"})

    def save(self, best: bool = False) -> None:
        """Flushes (a NaN never reaches a checkpoint), then rank 0 writes last.pt (and best.pt)."""
        self.flush()
        losses = D.consistent_state_dict(self.state.losses)     # a collective: every rank
        if self.main:
            state = {**self.checkpoint_state(), "losses": losses}   # built once for both files
            ckpt.save(state, self.run_dir / "last.pt")
            if best:
                ckpt.save(state, self.run_dir / "best.pt")

    def checkpoint_state(self) -> dict:
        return {**self.state.state_dict(), "global_step": self.global_step, "rng": rng_state(),
                "best": dict(self.best), "config": to_dict(self.recipe), "world_size": self.world.size,
                "threads": torch.get_num_threads()}

    # -- one stage ---------------------------------------------------------------------------
    def _build_stage(self, si: int, name: str, recipe: Recipe, prev) -> None:
        cfg = self.cfg = recipe.trainer
        self.stage_recipe = recipe
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed + si)
        model = build("model", recipe.model)
        losses, self.terms = build_losses(recipe.losses)
        if prev is not None:
            model.load_state_dict(prev[0])               # stage II starts from stage I's weights
            carry_loss_state(losses, self.terms, prev[1])
        dev = self.device
        self.channels_last = cfg.channels_last and dev.type == "cuda"
        model.to(dev, memory_format=torch.channels_last) if self.channels_last else model.to(dev)
        if cfg.sync_bn and self.world.distributed:
            model = D.convert_sync_batchnorm(model)
        losses.to(dev)
        optimizers = build_optimizers(model, losses, cfg)   # freezes lr_mult-0 parameters first
        if not recipe.data.train:
            raise ValueError("the recipe has no data.train dataset")
        self.loader = train_loader(build("dataset", recipe.data.train, split="train"), recipe, self.world,
                                   recipe.data.sampler)
        self.batches_per_epoch = len(self.loader.batch_sampler) + self.loader.batch_sampler.start
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulate)
        dtype = amp_dtype(cfg, dev)
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else contextlib.nullcontext
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.state = StageState(si, name, model, losses, optimizers,
                                Schedule(optimizers, cfg, self.steps_per_epoch), scaler)
        self.loss_params = [p for p in losses.parameters() if p.requires_grad]
        self.trainable = [p for p in model.parameters() if p.requires_grad] + self.loss_params
        self.loss_labels = ["loss"] + [f"loss/{t.label}" for t in self.terms]
        val_set = build("dataset", recipe.data.val, split="val") if recipe.data.val else None
        evaluators = [(e if isinstance(e, str) else e["name"], build("evaluator", e)) for e in recipe.evaluators]
        self.hooks = [NaNGuard(), MetricsLogger(), Evaluator(evaluators, val_set), BestTracker(), Checkpointer(),
                      ProgressBar(self.progress), *build_hooks(cfg.hooks)]
        if self.on_step is not None:
            self.hooks.append(StepCallback(self.on_step))
        for h in self.hooks:
            h.trainer = self
        self.history: List[tuple] = []

    def _wrap(self) -> None:
        model = self.state.model
        if self.cfg.compile:
            model = torch.compile(model)
        if self.world.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = model

    def _run_stage(self, si: int, name: str, recipe: Recipe, resume: Optional[dict], prev):
        self._build_stage(si, name, recipe, prev)
        s, cfg = self.state, self.cfg
        if resume is not None:
            try:
                s.load_state_dict(resume)
            except (RuntimeError, ValueError, KeyError) as err:
                raise ckpt.CheckpointError(f"the checkpoint does not fit this recipe: {err}") from None
        if s.epoch >= cfg.epochs or (cfg.max_steps is not None and s.step >= cfg.max_steps):
            return s.model.state_dict(), loss_states(s.losses, self.terms)   # finished: hand its weights on
        self._wrap()
        if resume is not None:
            set_rng_state(resume["rng"])             # last: after everything that draws when built
        self.stage_done, self.phase = False, "the stage's start"
        for h in self.hooks:
            h.before_stage()
        try:
            self._epochs()
        except RuntimeError as err:
            stalled = D.stalled_error(err, self.world, self.cfg.dist_timeout_s, self.phase)
            if stalled is None:
                raise
            raise stalled from err
        except KeyboardInterrupt:
            self.save()
            if self.main:
                self.out(f"interrupted at step {self.global_step}: checkpoint {self.run_dir / 'last.pt'}")
            raise
        finally:
            self.progress.close()
        for h in self.hooks:
            h.after_stage()
        if self.world.distributed:
            self.log.write({"step": self.global_step, "stage": name,
                            "ddp_param_max_diff": D.param_divergence(s.model, self.world)})
        return s.model.state_dict(), loss_states(s.losses, self.terms)

    def _epochs(self) -> None:
        s, cfg = self.state, self.cfg
        sampler = self.loader.batch_sampler
        while s.epoch < cfg.epochs and not self.stage_done:
            sampler.set_epoch(s.epoch, s.batch)
            self.model.train()
            s.losses.train()
            if cfg.bn_eval:
                set_bn_eval(self.model)
            for h in self.hooks:
                h.before_epoch()
            for group in self._groups():
                self.phase = f"step {self.global_step + 1} (DDP's gradient all-reduce)"
                loss = self.run_step(group)
                self.phase = f"after step {self.global_step + 1} (hooks: loss flush, checkpoint, evaluation)"
                self.step_samples = len(group) * cfg.batch_size
                s.step += 1
                s.batch += len(group)
                self.global_step += 1
                self.history.append((self.global_step, loss))
                if cfg.max_steps is not None and s.step >= cfg.max_steps:
                    self.stage_done = True
                for h in self.hooks:
                    h.after_step()
                if self.stage_done:
                    break
            if s.batch >= self.batches_per_epoch:
                s.epoch, s.batch = s.epoch + 1, 0
            self.stage_done = self.stage_done or s.epoch >= cfg.epochs
            for h in self.hooks:
                h.after_epoch()

    def _groups(self):
        """The rest of the epoch's micro-batches, ``accumulate`` at a time (fewer at its end)."""
        left = self.batches_per_epoch - self.state.batch
        group = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == min(self.cfg.accumulate, left):
                left -= len(group)
                yield group
                group = []


def train(recipe: Recipe, run_dir, *, resume=None, out=print, **kwargs) -> Dict[str, float]:
    """Trains ``recipe`` into ``run_dir``; returns the last evaluation's metrics."""
    trainer = Trainer(recipe, run_dir, resume=resume, out=out, **kwargs)
    try:
        return trainer.fit()
    finally:
        # The trainer and its hooks hold each other: free them (DDP's reducer and its pending gloo
        # work among them) now; freed at interpreter exit instead, gloo work can abort the process.
        del trainer
        gc.collect()
