"""Trainer step vs a plain hand-written PyTorch loop: the same recipe's model, losses, optimizers, batches.

Cases: the core's tiny_cnn image-embedding recipe (default), or, with ``--recipe NAME``
(repeatable), registered recipes; ``--recipe plugins`` is one scenes recipe per seed plugin.
A recipe with stages runs its last stage. Both loops build the recipe's own pieces and run
``--steps`` optimizer steps over the trainer's DataLoader (the recipe's sampler and workers).
The hand loop does only forward, the recipe's weighted losses, backward, gradient clipping, the
optimizer steps and the recipe's LR schedule (both loops follow one trajectory: the speed of
float math can depend on the values); what the trainer adds per step is its cost: the loss
mapping, loss bookkeeping on the device, flushes every ``log_every`` steps, and, at an epoch end
inside the timed span, its checkpoint. Evaluation is off in both (the recipe's evaluators and
data.val dropped). On CUDA both use bf16 autocast and channels_last. Time per step: the wall
time of the steps after ``--warmup`` (synchronised on CUDA), median over ``--runs`` interleaved
runs that take turns to go first. Goal: <= 5% overhead.
Usage: python benchmarks/bench_train_step.py [--quick] [--device cuda] [--recipe NAME|plugins]
       [--steps N] [--json rows.json]
"""

import math
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parser, print_table  # noqa: E402

from fusedembed import RecipeError, build, load_recipe  # noqa: E402
from fusedembed.config import apply_overrides, stage_recipes, to_dict, validate  # noqa: E402
from fusedembed.distributed import World  # noqa: E402
from fusedembed.trainer import train  # noqa: E402
from fusedembed.trainer.data import to_device, train_loader  # noqa: E402
from fusedembed.trainer.loop import amp_dtype, set_bn_eval  # noqa: E402
from fusedembed.trainer.losses import build_losses, loss_values  # noqa: E402
from fusedembed.trainer.optim import Schedule, build_optimizers  # noqa: E402

PLUGIN_RECIPES = ["dualpath/scenes", "multigrain/scenes", "mlimages/scenes", "alignment/scenes"]


def core_recipe(args, root):
    size, width, depth, batch = ((32, 16, 3, 32) if args.quick else (64, 32, 4, 64))
    n = batch * max(args.steps + 1, 8 if args.quick else 32)   # one epoch: no epoch end is timed
    scenes = {"name": "scenes", "root": root, "num_images": n, "image_size": size, "view": "image",
              "progress": False}
    return validate({
        "model": {"name": "image_embedding", "num_classes": 57, "embed_dim": 128,
                  "backbone": {"name": "tiny_cnn", "width": width, "depth": depth, "pool": "gem"}},
        "losses": [{"name": "bce"}],
        "data": {"train": scenes},
        "trainer": {"epochs": 100, "max_steps": args.steps, "batch_size": batch, "lr": 0.01,
                    "device": args.device, "log_every": 10, "amp": "bf16",
                    "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}},
    })


def registered_recipe(name, args):
    """``name``'s last stage, set to run ``args.steps`` steps on ``args.device`` without evaluation."""
    _, stage = stage_recipes(load_recipe(name))[-1]
    cuda = args.device.startswith("cuda")
    overrides = [f"trainer.max_steps={args.steps}", "trainer.epochs=100000", f"trainer.device={args.device}",
                 f"trainer.amp={'bf16' if cuda else 'off'}", f"trainer.channels_last={str(cuda).lower()}",
                 "evaluators=[]", "data.val=null", "data.test=null"]
    return validate(apply_overrides(to_dict(stage), overrides), check=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trainer_step_time(recipe, args) -> float:
    marks = {}

    def on_step(trainer):
        if trainer.global_step in (args.warmup, args.steps):
            sync(args.device)
            marks[trainer.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run_dir:
        train(recipe, run_dir, out=lambda _: None, on_step=on_step)
    return (marks[args.steps] - marks[args.warmup]) / (args.steps - args.warmup)


def hand_step_time(recipe, args) -> float:
    cfg, device = recipe.trainer, torch.device(args.device)
    torch.manual_seed(cfg.seed)
    dtype = amp_dtype(cfg, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    model = build("model", recipe.model)
    losses, terms = build_losses(recipe.losses)
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    losses.to(device)
    optimizers = build_optimizers(model, losses, cfg)
    trainable = [p for p in chain(model.parameters(), losses.parameters()) if p.requires_grad]
    loader = train_loader(build("dataset", recipe.data.train, split="train"), recipe, World(), recipe.data.sampler)
    schedule = Schedule(optimizers, cfg, math.ceil(len(loader.batch_sampler) / cfg.accumulate))
    model.train()
    losses.train()
    if cfg.bn_eval:
        set_bn_eval(model)
    step, micro, epoch, marks = 0, 0, 0, {}
    while step < args.steps:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            batch = to_device(batch, device, channels_last)
            with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                outputs = model(batch)
                values = loss_values(losses, terms, outputs, batch)
                total = sum(t.weight * v for t, v in zip(terms, values))
            (total / cfg.accumulate).backward()
            micro += 1
            if micro % cfg.accumulate:
                continue
            if cfg.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(trainable, cfg.grad_clip_value)
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip_norm)
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            schedule.step()
            step += 1
            if step in (args.warmup, args.steps):
                sync(args.device)
                marks[step] = time.perf_counter()
            if step == args.steps:
                break
        epoch += 1
    return (marks[args.steps] - marks[args.warmup]) / (args.steps - args.warmup)


def measure(case, recipe, args) -> list:
    build("dataset", recipe.data.train, split="train")        # generate the data once, untimed
    loops = {"trainer": trainer_step_time, "hand loop": hand_step_time}
    times = {k: [] for k in loops}
    for run in range(args.runs):            # interleaved, taking turns to go first: drift hits both
        for k in (list(loops) if run % 2 == 0 else list(loops)[::-1]):
            times[k].append(loops[k](recipe, args))
    med = {k: statistics.median(v) for k, v in times.items()}
    samples = recipe.trainer.batch_size * recipe.trainer.accumulate
    return [{"case": case, "impl": k, "device": args.device, "us": v * 1e6, "samples_per_s": samples / v,
             "fusedembed_speedup": v / med["trainer"]} for k, v in med.items()]


def main():
    ap = parser(__doc__, cases=False)
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME",
                    help=f"a registered recipe; 'plugins' = {', '.join(PLUGIN_RECIPES)}")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30, quick 15)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    args.steps = args.steps or (15 if args.quick else 30)
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.warmup < 1 or args.runs < 1:
        ap.error(f"--warmup and --runs must be >= 1, got {args.warmup} and {args.runs}")
    names = list(chain.from_iterable(PLUGIN_RECIPES if n == "plugins" else [n] for n in args.recipe))
    try:                                                      # every recipe checked before the first run
        recipes = {name: registered_recipe(name, args) for name in names}
    except RecipeError as err:
        ap.error(f"--recipe: {err}")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        if not names:
            recipe = core_recipe(args, root)
            rows += measure(f"tiny_cnn b{recipe.trainer.batch_size} {recipe.data.train['image_size']}px",
                            recipe, args)
        failed = []
        for name, recipe in recipes.items():
            try:                            # one recipe that cannot run must not cost the others' rows
                rows += measure(name, recipe, args)
            except Exception as err:
                failed.append(name)
                print(f"{name}: skipped ({type(err).__name__}: {str(err)[:300]})", file=sys.stderr)
    if rows:
        print_table(rows)
    for case in dict.fromkeys(r["case"] for r in rows):
        us = {r["impl"]: r["us"] for r in rows if r["case"] == case}
        print(f"{case}: trainer overhead vs hand loop: {100 * (us['trainer'] / us['hand loop'] - 1):+.1f}%")
    if args.json:
        import json
        text = json.dumps(rows, indent=1)
        print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
