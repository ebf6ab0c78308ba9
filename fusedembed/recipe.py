"""The recipe schema: what a YAML recipe may contain, with types and defaults.

Components (model, losses, datasets, sampler, evaluators) are ``{"name": ..., **kwargs}``
dicts checked against the registered factories; the other sections are dataclasses checked
key by key. The trainer section is the trainer's to extend as it gains options.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

from .registry import normalize, spec

# A `losses` entry is a loss component plus these keys of the trainer's, never given to the factory.
LossSpec = spec("loss", weight=float, inputs=Dict[str, str])


def split_loss(entry) -> Tuple[dict, float, Dict[str, str]]:
    """``(component config for build("loss", ...), weight, inputs)`` of one ``losses`` entry."""
    cfg = normalize(entry, "loss")
    return cfg, float(cfg.pop("weight", 1.0)), dict(cfg.pop("inputs", None) or {})


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    momentum: float = 0.9               # sgd only (rmsprop runs without momentum)
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    alpha: float = 0.99                 # rmsprop: decay of the squared-gradient average
    eps: float = 1.0e-8                 # rmsprop and adamw: added to the denominator
    # Parameter-name glob -> LR multiplier, first match wins; 0 freezes (``{"image.backbone.*": 0}``).
    lr_mult: Dict[str, float] = field(default_factory=dict)
    # Parameter-name globs kept out of weight decay; norm layers and biases when decay_norm_bias is off.
    no_weight_decay: List[str] = field(default_factory=list)
    decay_norm_bias: bool = True
    # Parameter-name glob -> multiplier of weight_decay, first match wins (``{"*bn*": 0.1}``).
    weight_decay_mult: Dict[str, float] = field(default_factory=dict)


@dataclass
class SchedulerConfig:
    name: Literal["constant", "step", "multistep", "cosine"] = "constant"
    step_size: int = 30                 # epochs, for "step"
    milestones: List[int] = field(default_factory=list)   # epochs, for "multistep"
    gamma: float = 0.1
    min_lr: float = 0.0                 # floor of "cosine"
    warmup_epochs: int = 0
    # linear: from lr * warmup_factor up to lr; exponential: x warmup_factor per epoch, ending at lr.
    warmup: Literal["linear", "exponential"] = "linear"
    warmup_factor: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 1
    lr: float = 0.1                     # base LR; optimizer.lr_mult scales it per parameter group
    max_steps: Optional[int] = None
    batch_size: int = 32                # global: split evenly over the DDP processes
    eval_batch_size: Optional[int] = None
    accumulate: int = 1                 # micro-batches per optimizer step
    grad_clip_norm: Optional[float] = None
    grad_clip_value: Optional[float] = None
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    eval_every: int = 1                 # epochs
    checkpoint_every: Optional[int] = None   # steps; epoch ends always checkpoint
    best_metric: Optional[str] = None
    best_mode: Literal["max", "min"] = "max"
    bn_eval: bool = False               # batch-norm layers use their running statistics while training
    loss_lr_mult: float = 1.0           # LR of the losses' own parameters (their separate optimizer)
    loss_weight_decay: float = 0.0
    sync_bn: bool = False               # DDP: BatchNorm statistics over the global batch
    dist_timeout_s: float = 1800.0      # DDP: a collective waiting longer ends the job, naming it
    hooks: List[spec("hook")] = field(default_factory=list)   # plugin hooks, after the built-ins
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class DataConfig:
    train: Optional[spec("dataset")] = None
    val: Optional[spec("dataset")] = None
    test: Optional[spec("dataset")] = None
    sampler: Optional[spec("sampler")] = None


@dataclass(kw_only=True)
class Recipe:
    description: str = ""
    model: spec("model")
    losses: List[LossSpec] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    evaluators: List[spec("evaluator")] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Each stage is {"name": ..., <section>: partial} merged onto the recipe, e.g.
    # {"name": "stage2", "trainer": {"epochs": 5, "optimizer": {"lr_mult": {"image.*": 0.02}}},
    # "losses": [...]}; see config.stage_recipes.
    stages: List[Dict[str, Any]] = field(default_factory=list)


STAGE_SECTIONS = ("model", "losses", "data", "evaluators", "trainer")

# (dotted key, lowest, strict): the value must be > lowest (strict) or >= lowest. None passes.
_RANGES = (("epochs", 1, False), ("lr", 0, False), ("max_steps", 0, False), ("batch_size", 1, False),
           ("eval_batch_size", 1, False), ("accumulate", 1, False), ("grad_clip_norm", 0, True),
           ("grad_clip_value", 0, True), ("workers", 0, False), ("seed", 0, False), ("log_every", 1, False),
           ("eval_every", 1, False), ("checkpoint_every", 1, False), ("loss_lr_mult", 0, False),
           ("loss_weight_decay", 0, False), ("dist_timeout_s", 0, True),
           ("optimizer.momentum", 0, False), ("optimizer.weight_decay", 0, False),
           ("scheduler.step_size", 1, False), ("scheduler.gamma", 0, True), ("scheduler.min_lr", 0, False),
           ("scheduler.warmup_epochs", 0, False), ("scheduler.warmup_factor", 0, True))


def trainer_range_problems(cfg: TrainerConfig, where: str = "trainer") -> List[str]:
    """One message per trainer value out of its range (``trainer.grad_clip_norm must be > 0,
    got -1.0``): a negative clip norm would reverse training, a zero step size divide by zero."""
    problems = []
    for key, low, strict in _RANGES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and (value <= low if strict else value < low):
            problems.append(f"{where}.{key} must be {'>' if strict else '>='} {low}, got {value!r}")
    for m in cfg.optimizer.lr_mult.values():
        if m < 0:
            problems.append(f"{where}.optimizer.lr_mult: multipliers must be >= 0, got {m!r}")
    if any(m < 0 for m in cfg.scheduler.milestones):
        problems.append(f"{where}.scheduler.milestones must be >= 0, got {cfg.scheduler.milestones!r}")
    return problems
