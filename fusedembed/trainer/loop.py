"""The training loop: one recipe, its stages, losses, optimizers, checkpoints and logs.

Positions are counted in optimizer steps; a checkpoint always sits on a step boundary
(``batch`` = micro-batches of the epoch already consumed), so resuming replays nothing and
skips nothing. Loss values stay on the device and are checked for NaN/inf and logged every
``log_every`` steps (one host sync per interval), before each checkpoint and at epoch end.
"""

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .. import distributed as D
from ..config import save_recipe, stage_recipes, to_dict
from ..devices import resolve_device
from ..plugins import build, get_registry
from ..recipe import Recipe, split_loss
from . import checkpoint as ckpt
from .data import eval_loader, set_dataset_epoch, to_device, train_loader
from .logging import MetricsLog, Progress
from .optim import Schedule, build_optimizers


class NonFiniteLossError(FloatingPointError):
    def __init__(self, step: int, loss: str, value: float):
        self.step, self.loss, self.value = step, loss, value
        super().__init__(f"loss {loss!r} is {value} at step {step}; training stopped (the last "
                         f"checkpoint written before it is kept)")


@dataclass
class LossTerm:
    label: str                      # the logged name: the registered name, made unique
    weight: float
    sources: Dict[str, str]         # forward argument -> model output or batch key
    optional: frozenset             # arguments with a default: passed only when found


def build_losses(entries):
    modules, terms, seen = nn.ModuleList(), [], {}
    for entry in entries:
        cfg, weight, inputs = split_loss(entry)
        name = get_registry("loss").get(cfg["name"]).short     # logged as loss/<bare name>
        module = build("loss", cfg)
        params = {k: p for k, p in inspect.signature(module.forward).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [k for k in inputs if k not in params]
        if unknown:
            raise ValueError(f"loss {name!r}: inputs maps {unknown}, but its forward takes "
                             f"{', '.join(params) or 'nothing'}")
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}_{seen[name]}"
        modules.append(module)
        terms.append(LossTerm(label, weight, {a: inputs.get(a, a) for a in params},
                              frozenset(a for a, p in params.items() if p.default is not p.empty)))
    if not terms:
        raise ValueError("the recipe has no losses: list at least one under `losses`")
    return modules, terms


def loss_values(modules, terms, outputs: dict, batch: dict) -> List[torch.Tensor]:
    values = []
    for module, term in zip(modules, terms):
        kwargs = {}
        for arg, src in term.sources.items():
            if src in outputs:
                kwargs[arg] = outputs[src]
            elif src in batch:
                kwargs[arg] = batch[src]
            elif arg not in term.optional:
                raise KeyError(f"loss {term.label!r} needs {arg!r} from {src!r}, which is neither a model "
                               f"output ({', '.join(outputs)}) nor a batch field ({', '.join(batch)}); "
                               f"map it with inputs: {{{arg}: <key>}}")
        value = module(**kwargs)
        if value.dim() != 0:
            raise ValueError(f"loss {term.label!r} returned shape {tuple(value.shape)}, expected a scalar")
        values.append(value.float())
    return values


def loss_states(modules, terms) -> Dict[str, dict]:
    return {t.label: m.state_dict() for m, t in zip(modules, terms)}


def carry_loss_state(modules, terms, prev: Dict[str, dict]) -> None:
    """A loss of the previous stage with the same label and the same state (names, shapes)
    continues from it (a learned classifier or margin, a negatives bank); others start fresh."""
    for module, term in zip(modules, terms):
        state, own = prev.get(term.label), module.state_dict()
        if state and state.keys() == own.keys() and all(v.shape == own[k].shape for k, v in state.items()):
            module.load_state_dict(state)


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
        self.resume_state = ckpt.load(resume) if resume else None
        self.stages = stage_recipes(recipe)
        if self.resume_state is not None:
            names = [n for n, _ in self.stages]
            si = int(self.resume_state["stage"])
            if si >= len(names) or self.resume_state.get("stage_name") != names[si]:
                raise ckpt.CheckpointError(f"{resume}: checkpoint is of stage {self.resume_state.get('stage_name')!r} "
                                           f"(#{si}), but this recipe's stages are {names}")
        self.device = resolve_device(recipe.trainer.device, what="trainer.device")
        self.world = D.init(self.device.type)
        self.device = resolve_device(recipe.trainer.device, local_rank=self.world.local_rank,
                                     what="trainer.device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.world.is_main
        self.log = MetricsLog(self.run_dir, enabled=self.main)
        self.progress = Progress(self.main, out)
        self.best = dict(self.resume_state["best"]) if self.resume_state else {"value": None, "step": None}
        self.global_step = int(self.resume_state.get("global_step", 0)) if self.resume_state else 0
        self.last_eval: Dict[str, float] = {}

    # -- public ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, float]:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_recipe(self.recipe, self.run_dir)
        try:
            prev = None
            start = int(self.resume_state["stage"]) if self.resume_state else 0
            for si, (name, recipe) in enumerate(self.stages):
                if si < start:
                    continue
                resume = self.resume_state if si == start else None
                prev = self._run_stage(si, name, recipe, resume, prev)   # (model, {loss label: state})
            if self.main:
                from .report import write_report
                write_report(self.run_dir, self.recipe, self.log.read(), self.best)
            return self.last_eval
        finally:
            self.progress.close()
            self.log.close()
            D.shutdown(self.world)

    # -- one stage ---------------------------------------------------------------------------
    def _run_stage(self, si: int, name: str, recipe: Recipe, resume: Optional[dict], prev):
        cfg = recipe.trainer
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed + si)
        model = build("model", recipe.model)
        losses, terms = build_losses(recipe.losses)
        if prev is not None:
            model.load_state_dict(prev[0])               # stage II starts from stage I's weights
            carry_loss_state(losses, terms, prev[1])
        dev = self.device
        channels_last = cfg.channels_last and dev.type == "cuda"
        model.to(dev, memory_format=torch.channels_last) if channels_last else model.to(dev)
        losses.to(dev)
        optimizers = build_optimizers(model, losses, cfg)   # freezes lr_mult-0 parameters first
        train_set = build("dataset", recipe.data.train, split="train") if recipe.data.train else None
        if train_set is None:
            raise ValueError("the recipe has no data.train dataset")
        loader = train_loader(train_set, recipe, self.world, recipe.data.sampler)
        batches = len(loader.batch_sampler) + loader.batch_sampler.start
        steps_per_epoch = math.ceil(batches / cfg.accumulate)
        schedule = Schedule(optimizers, cfg, steps_per_epoch)
        dtype = amp_dtype(cfg, dev)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        epoch, batch_pos, step = 0, 0, 0
        if resume is not None:
            epoch, batch_pos, step = int(resume["epoch"]), int(resume["batch"]), int(resume["step"])
            try:
                model.load_state_dict(resume["model"])
                losses.load_state_dict(resume["losses"])
                if sorted(resume["optimizers"]) != sorted(optimizers):
                    raise ValueError(f"optimizers {sorted(resume['optimizers'])} in the checkpoint, "
                                     f"{sorted(optimizers)} in this run")
                for k, opt in optimizers.items():
                    opt.load_state_dict(resume["optimizers"][k])
                schedule.load_state_dict(resume["schedule"])
                if scaler is not None and resume.get("scaler"):
                    scaler.load_state_dict(resume["scaler"])
            except (RuntimeError, ValueError, KeyError) as err:
                raise ckpt.CheckpointError(f"the checkpoint does not fit this recipe: {err}") from None
            ckpt.set_rng_state(resume["rng"])
        if epoch >= cfg.epochs or (cfg.max_steps is not None and step >= cfg.max_steps):
            return model.state_dict(), loss_states(losses, terms)   # finished stage: hand its weights on
        raw = model
        if cfg.compile:
            model = torch.compile(model)
        if self.world.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        loss_params = [p for p in losses.parameters() if p.requires_grad]
        trainable = [p for p in raw.parameters() if p.requires_grad] + loss_params
        val_set = build("dataset", recipe.data.val, split="val") if recipe.data.val else None
        evaluators = [(e if isinstance(e, str) else e["name"], build("evaluator", e)) for e in recipe.evaluators]
        self.ctx = dict(si=si, name=name, recipe=recipe, raw=raw, losses=losses, optimizers=optimizers,
                        schedule=schedule, scaler=scaler, steps_per_epoch=steps_per_epoch)
        history: List[tuple] = []
        labels = ["loss"] + [f"loss/{t.label}" for t in terms]
        timer = {"t": time.perf_counter(), "samples": 0}
        pos = {"epoch": epoch, "batch": batch_pos, "step": step}
        autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else contextlib.nullcontext
        local_batch = cfg.batch_size // self.world.size
        self.progress.start(cfg.epochs * steps_per_epoch if cfg.max_steps is None else cfg.max_steps,
                            step, f"{name}")

        def flush():
            """Checks and logs the losses of the steps since the last flush (all ranks)."""
            if not history:
                return
            vals = D.mean(torch.stack([v for _, v in history]), self.world).cpu()
            finite = torch.isfinite(vals)
            if not bool(finite.all()):
                row = int((~finite).any(1).nonzero()[0])
                cols = (~finite[row]).nonzero().flatten().tolist()
                # Name a registered loss; the weighted total only when each loss was finite.
                bad = ([c for c in cols if c > 0] or cols)[0]
                culprit = labels[bad].removeprefix("loss/") if bad else "total (weighted sum)"
                raise NonFiniteLossError(history[row][0], culprit, float(vals[row, bad]))
            elapsed = time.perf_counter() - timer["t"]
            mean = vals.mean(0).tolist()
            entry = {"step": history[-1][0], "stage": name,
                     "epoch": round(pos["epoch"] + pos["batch"] / max(batches, 1), 4),
                     **dict(zip(labels, mean)), "lr": schedule.lr(),
                     "samples_per_s": timer["samples"] / elapsed if elapsed > 0 else None}
            self.log.write(entry)
            self.progress.log({k: v for k, v in entry.items() if k not in ("stage",)})
            history.clear()
            timer.update(t=time.perf_counter(), samples=0)

        def save(best=False):
            if self.main:
                state = self._state(pos)        # built once when it goes to both files
                ckpt.save(state, self.run_dir / "last.pt")
                if best:
                    ckpt.save(state, self.run_dir / "best.pt")

        try:
            for epoch in range(pos["epoch"], cfg.epochs):
                pos.update(epoch=epoch)
                set_dataset_epoch(train_set, epoch)
                loader.batch_sampler.set_epoch(epoch, pos["batch"])
                model.train()
                losses.train()
                if cfg.bn_eval:
                    set_bn_eval(model)
                group, group_start = [], pos["batch"]
                stop = False
                for i, batch in enumerate(loader, start=pos["batch"]):
                    count = min(cfg.accumulate, batches - group_start)
                    last_micro = (i - group_start + 1) == count
                    batch = to_device(batch, dev, channels_last)
                    sync = (contextlib.nullcontext() if last_micro or not self.world.distributed
                            else model.no_sync())
                    with sync:
                        with autocast():
                            outputs = model(batch)
                            values = loss_values(losses, terms, outputs, batch)
                            total = sum(t.weight * v for t, v in zip(terms, values))
                        scaled = total / count
                        (scaler.scale(scaled) if scaler else scaled).backward()
                    group.append(torch.stack([total.detach()] + [v.detach() for v in values]))
                    if not last_micro:
                        continue
                    if loss_params and self.world.distributed:   # DDP averages the model's grads only
                        for p in loss_params:
                            if p.grad is not None:
                                torch.distributed.all_reduce(p.grad)
                                p.grad /= self.world.size
                    if scaler is not None:
                        for opt in optimizers.values():
                            scaler.unscale_(opt)
                    if cfg.grad_clip_value is not None:
                        torch.nn.utils.clip_grad_value_(trainable, cfg.grad_clip_value)
                    if cfg.grad_clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip_norm)
                    for opt in optimizers.values():
                        scaler.step(opt) if scaler is not None else opt.step()
                        opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.update()
                    schedule.step()
                    step = pos["step"] = pos["step"] + 1
                    self.global_step += 1
                    pos["batch"] = group_start = i + 1
                    history.append((self.global_step, torch.stack(group).mean(0)))
                    group = []
                    timer["samples"] += count * local_batch * self.world.size
                    self.progress.update()
                    if step % cfg.log_every == 0:
                        flush()
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        flush()
                        save()
                    if self.on_step is not None:
                        self.on_step(self)
                    if cfg.max_steps is not None and step >= cfg.max_steps:
                        stop = True
                        break
                flush()
                last_epoch = stop or epoch == cfg.epochs - 1
                if not stop or pos["batch"] >= batches:
                    pos.update(epoch=epoch + 1, batch=0)
                improved = False
                if evaluators and val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                    improved = self._evaluate(raw, evaluators, val_set, recipe, autocast, pos)
                    model.train()
                save(best=improved)
                if stop:
                    break
        except KeyboardInterrupt:
            flush()            # never checkpoint weights a NaN has already reached
            save()
            if self.main:
                self.out(f"interrupted at step {self.global_step}: checkpoint {self.run_dir / 'last.pt'}")
            raise
        finally:
            self.progress.close()
        if self.world.distributed:
            self.log.write({"step": self.global_step, "stage": name,
                            "ddp_param_max_diff": D.param_divergence(raw, self.world)})
        return raw.state_dict(), loss_states(losses, terms)

    def _evaluate(self, raw, evaluators, val_set, recipe, autocast, pos) -> bool:
        cfg = recipe.trainer
        improved = False
        if self.main:
            metrics: Dict[str, float] = {}
            loader = eval_loader(val_set, recipe)
            with autocast():
                for ename, evaluator in evaluators:
                    for k, v in evaluator(raw, loader, device=self.device).items():
                        if k in metrics:
                            raise ValueError(f"evaluator {ename!r} reports {k!r}, which another evaluator "
                                             f"already reported")
                        metrics[k] = float(v)
            self.last_eval = metrics
            self.log.write({"step": self.global_step, "stage": self.ctx["name"], "epoch": pos["epoch"],
                            **{f"val/{k}": v for k, v in metrics.items()}})
            self.progress.log({"step": self.global_step, **{f"val/{k}": v for k, v in metrics.items()}})
            if cfg.best_metric is not None:
                if cfg.best_metric not in metrics:
                    raise KeyError(f"trainer.best_metric {cfg.best_metric!r} is not among the evaluators' "
                                   f"metrics: {', '.join(metrics)}")
                value, old = metrics[cfg.best_metric], self.best.get("value")
                better = old is None or (value > old if cfg.best_mode == "max" else value < old)
                if better:
                    self.best = {"metric": cfg.best_metric, "value": value, "step": self.global_step}
                    improved = True
        D.barrier(self.world)
        return improved

    def _state(self, pos) -> dict:
        c = self.ctx
        return {"stage": c["si"], "stage_name": c["name"], "epoch": pos["epoch"], "batch": pos["batch"],
                "step": pos["step"], "global_step": self.global_step,
                "model": c["raw"].state_dict(), "losses": c["losses"].state_dict(),
                "optimizers": {k: o.state_dict() for k, o in c["optimizers"].items()},
                "schedule": c["schedule"].state_dict(),
                "scaler": c["scaler"].state_dict() if c["scaler"] is not None else {},
                "rng": ckpt.rng_state(), "best": dict(self.best), "config": to_dict(self.recipe),
                "world_size": self.world.size}


def train(recipe: Recipe, run_dir, *, resume=None, out=print, **kwargs) -> Dict[str, float]:
    """Trains ``recipe`` into ``run_dir``; returns the last evaluation's metrics."""
    return Trainer(recipe, run_dir, resume=resume, out=out, **kwargs).fit()
