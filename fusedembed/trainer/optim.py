"""Optimizers and LR schedules from the recipe's ``trainer`` section.

Optimizers (``optimizer.name``): ``sgd`` (momentum, nesterov), ``adamw`` (betas, eps) and
``rmsprop`` (alpha: the decay of the running mean of squared gradients, eps; no momentum).
That mean starts at 0, so with alpha near 1 the first updates are ~1/sqrt(1 - alpha) times
the LR on every weight; a warm-up (``scheduler.warmup_epochs``) tempers them.

Parameter groups: each model parameter takes the LR multiplier of the first ``lr_mult`` glob
matching its name (1 when none does); multiplier 0 freezes it (``requires_grad=False``, not
given to the optimizer). Biases and norm weights (tensors of one dimension) skip weight decay
unless ``decay_norm_bias``; names matching ``no_weight_decay`` always do; the others decay by
``weight_decay`` times the multiplier of the first ``weight_decay_mult`` glob matching their
name (1 when none does). Parameters owned by
the losses (a learnable margin) get their own optimizer, so their LR and decay never mix with
the model's.
"""

import fnmatch
import math
from typing import Dict, List, Optional

import torch
from torch import nn


def lr_multiplier(name: str, lr_mult: Dict[str, float]) -> float:
    """The multiplier of the first glob of ``lr_mult`` (or any glob -> multiplier map) matching
    ``name``; 1 when none does."""
    for pattern, mult in lr_mult.items():
        if fnmatch.fnmatchcase(name, pattern):
            return float(mult)
    return 1.0


def param_groups(named_params, lr: float, opt_cfg, *, lr_mult: Optional[Dict[str, float]] = None,
                 weight_decay: Optional[float] = None,
                 weight_decay_mult: Optional[Dict[str, float]] = None) -> List[dict]:
    """Groups keyed by (LR multiplier, weight decay); freezes the parameters whose multiplier is 0."""
    lr_mult = opt_cfg.lr_mult if lr_mult is None else lr_mult
    wd = opt_cfg.weight_decay if weight_decay is None else weight_decay
    wd_mult = opt_cfg.weight_decay_mult if weight_decay_mult is None else weight_decay_mult
    groups: Dict[tuple, dict] = {}
    for name, p in named_params:
        mult = lr_multiplier(name, lr_mult)
        if mult == 0:
            p.requires_grad_(False)
            continue
        if not p.requires_grad:      # frozen by the model itself
            continue
        no_decay = (not opt_cfg.decay_norm_bias and p.ndim <= 1) or any(
            fnmatch.fnmatchcase(name, g) for g in opt_cfg.no_weight_decay)
        decay = 0.0 if no_decay else wd * lr_multiplier(name, wd_mult)
        key = (mult, decay)
        group = groups.setdefault(key, {"params": [], "names": [], "lr_mult": mult,
                                        "lr": lr * mult, "weight_decay": decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def make_optimizer(groups: List[dict], opt_cfg) -> Optional[torch.optim.Optimizer]:
    if not groups:
        return None
    # "names" stays out of the optimizer: its state_dict must hold plain types only, and names
    # are checked against the checkpoint separately.
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(clean, lr=clean[0]["lr"], momentum=opt_cfg.momentum,
                               nesterov=opt_cfg.nesterov and opt_cfg.momentum > 0)
    if opt_cfg.name == "adamw":
        return torch.optim.AdamW(clean, lr=clean[0]["lr"], betas=tuple(opt_cfg.betas), eps=opt_cfg.eps)
    if opt_cfg.name == "rmsprop":
        if not 0 <= opt_cfg.alpha < 1:
            raise ValueError(f"trainer.optimizer.alpha must be in [0, 1), got {opt_cfg.alpha}")
        return torch.optim.RMSprop(clean, lr=clean[0]["lr"], alpha=opt_cfg.alpha, eps=opt_cfg.eps)
    raise ValueError(f"trainer.optimizer.name must be 'sgd', 'adamw' or 'rmsprop', got {opt_cfg.name!r}")


def build_optimizers(model: nn.Module, losses: nn.ModuleList, cfg) -> Dict[str, torch.optim.Optimizer]:
    """``{"model": ..., "loss": ...}`` (an entry only when it has trainable parameters)."""
    opt_cfg = cfg.optimizer
    out = {}
    model_opt = make_optimizer(param_groups(model.named_parameters(), cfg.lr, opt_cfg), opt_cfg)
    if model_opt is not None:
        out["model"] = model_opt
    loss_groups = param_groups(losses.named_parameters(), cfg.lr * cfg.loss_lr_mult, opt_cfg,
                               lr_mult={}, weight_decay=cfg.loss_weight_decay, weight_decay_mult={})
    loss_opt = make_optimizer(loss_groups, opt_cfg)
    if loss_opt is not None:
        out["loss"] = loss_opt
    if not out:
        raise ValueError("nothing to train: every parameter is frozen (trainer.optimizer.lr_mult "
                         "maps them all to 0)")
    return out


def lr_factor(sched, epoch_pos: float, total_epochs: int, base_lr: float) -> float:
    """Multiplier of the base LR at fractional epoch ``epoch_pos`` (0 at the start).

    Warm-up covers the first ``warmup_epochs``: linear from ``warmup_factor`` to 1 (per step),
    or exponential, ``warmup_factor ** (epoch - warmup_epochs)`` per whole epoch (ML-Images
    grows x1.297 per epoch for 8 epochs). Then step / multistep (per whole epoch, counted from
    the start of training) or cosine down to ``min_lr`` over the remaining epochs."""
    w = sched.warmup_epochs
    if epoch_pos < w:
        if sched.warmup == "linear":
            return sched.warmup_factor + (1 - sched.warmup_factor) * epoch_pos / w
        return sched.warmup_factor ** (math.floor(epoch_pos) - w)
    epoch = math.floor(epoch_pos)
    if sched.name == "constant":
        return 1.0
    if sched.name == "step":
        return sched.gamma ** (epoch // sched.step_size)
    if sched.name == "multistep":
        return sched.gamma ** sum(epoch >= m for m in sched.milestones)
    if sched.name == "cosine":
        span = max(total_epochs - w, 1e-12)
        t = min(max((epoch_pos - w) / span, 0.0), 1.0)
        floor = sched.min_lr / base_lr if base_lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"trainer.scheduler.name must be constant, step, multistep or cosine, got {sched.name!r}")


class Schedule:
    """Sets every group's LR to ``base * group multiplier * lr_factor`` from the step count, so
    its whole state is one integer and a resumed run gets the same LRs."""

    def __init__(self, optimizers: Dict[str, torch.optim.Optimizer], cfg, steps_per_epoch: int):
        self.optimizers, self.cfg = optimizers, cfg
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.bases = {k: [g["lr"] for g in opt.param_groups]
                      for k, opt in optimizers.items()}
        self.step_count = 0
        self.apply()

    def factor(self, step: int) -> float:
        return lr_factor(self.cfg.scheduler, step / self.steps_per_epoch, self.cfg.epochs, self.cfg.lr)

    def apply(self) -> None:
        f = self.factor(self.step_count)
        for key, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.bases[key]):
                group["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def lr(self) -> float:
        """The base LR now (multiplier 1)."""
        return self.cfg.lr * self.factor(self.step_count)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        if int(state["steps_per_epoch"]) != self.steps_per_epoch:
            raise ValueError(f"the checkpoint was made with {state['steps_per_epoch']} steps per epoch, "
                             f"this run has {self.steps_per_epoch} (batch size or dataset changed?)")
        self.step_count = int(state["step"])
        self.apply()
