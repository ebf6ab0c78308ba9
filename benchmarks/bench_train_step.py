"""Trainer step vs a plain hand-written PyTorch loop: same model, loss, optimizer, batches.

Both run ``--steps`` optimizer steps over the same DataLoader (the trainer's, workers=0); the
time per step is the wall time of the steps after ``--warmup``, synchronised on CUDA, median
over ``--runs`` runs. The trainer's extra work is what it adds per step: the loss mapping, LR
schedule, loss bookkeeping on the device, flushes every ``log_every`` steps, and (on CUDA)
bf16 autocast and channels_last, which the hand loop also uses there. The timed steps lie
within one epoch: an epoch end's checkpoint and evaluation are not per-step costs. Goal: <= 5%
overhead.
Usage: python benchmarks/bench_train_step.py [--quick] [--device cuda] [--json rows.json]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parser, print_table  # noqa: E402

from fusedembed import build  # noqa: E402
from fusedembed.config import validate  # noqa: E402
from fusedembed.distributed import World  # noqa: E402
from fusedembed.trainer import train  # noqa: E402
from fusedembed.trainer.data import to_device, train_loader  # noqa: E402


def make_recipe(args, root):
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
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = build("model", recipe.model).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build("loss", {"name": "bce"}).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loader = train_loader(build("dataset", recipe.data.train, split="train"), recipe, World())
    model.train()
    step, marks = 0, {}
    while step < args.steps:
        for batch in loader:
            batch = to_device(batch, device, channels_last=cuda)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(batch)["logits"], batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step in (args.warmup, args.steps):
                sync(args.device)
                marks[step] = time.perf_counter()
            if step == args.steps:
                break
    return (marks[args.steps] - marks[args.warmup]) / (args.steps - args.warmup)


def main():
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30, quick 15)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    args.steps = args.steps or (15 if args.quick else 30)
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    with tempfile.TemporaryDirectory() as root:
        recipe = make_recipe(args, root)
        build("dataset", recipe.data.train, split="train")        # generate the data once, untimed
        times = {"trainer": [], "hand loop": []}
        for _ in range(args.runs):                                # interleaved: drift hits both
            times["trainer"].append(trainer_step_time(recipe, args))
            times["hand loop"].append(hand_step_time(recipe, args))
    med = {k: statistics.median(v) for k, v in times.items()}
    case = f"tiny_cnn b{recipe.trainer.batch_size} {recipe.data.train['image_size']}px"
    rows = [{"case": case, "impl": k, "device": args.device, "us": v * 1e6,
             "fusedembed_speedup": v / med["trainer"]} for k, v in med.items()]
    print_table(rows)
    print(f"trainer overhead vs hand loop: {100 * (med['trainer'] / med['hand loop'] - 1):+.1f}%")
    if args.json:
        import json
        text = json.dumps(rows, indent=1)
        print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
