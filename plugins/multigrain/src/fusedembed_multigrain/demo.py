"""`fusedembed demo multigrain`: MultiGrain's claims at CPU scale on the embedded scenes.

Task: the number of objects in a scene (1-4, four classes; the scenes' colour and shape
labels would not survive the augmentation). Four trainings of one small conv trunk at 32 px
(crops of the 48-px images): lambda = 1 (CE only, no repeated augmentation) with average
pooling (p = 1) and with GeM p = 3; lambda = 1 with repeated augmentation (m = 3), which
separates the effect of RA from that of the margin loss; and lambda = 0.5 (CE + margin loss
with distance-weighted sampling, RA m = 3) with GeM p = 3. Each is measured on the test images for classification accuracy and on a copy-detection benchmark built from
them (queries: strong crops, rotations, JPEG, colour changes of some test images; gallery:
all test images, the rest acting as distractors), at the training resolution (32), at a
higher one (48), after p* at 48 (finetune_p on 50 train images per class) and after PCA
whitening fitted on a held-out split (the val images).
"""

import argparse
import io
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from torchvision.transforms import functional as TF

from fusedembed import build, load_recipe
from fusedembed.devices import resolve_device
from fusedembed.errors import run_command
from fusedembed.metrics import instance_map

from .finetune_p import accuracy, finetune_p, select_per_class
from .retrieval import embed_images, knn
from .transforms import eval_transform
from .whiten import whiten_model

RECIPE = "multigrain/scenes"
CE = "losses=[{name: cross_entropy, weight: 1.0}]"
CE_ONLY = (CE, "data.sampler.repeats=1")
RUNS = {
    "lambda=1, avg (p=1)": (*CE_ONLY, "model.p=1.0"),
    "lambda=1, GeM p=3": CE_ONLY,
    "lambda=1 + RA, GeM p=3": (CE,),
    "lambda=0.5 + RA, GeM p=3": (),
}
TRANSFORMS = ("crop", "rotate", "jpeg", "colour")
QUICK = ["data.train.num_images=96", "data.val.num_images=48", "trainer.epochs=1"]
TRAIN_RES, TEST_RES = 32, 48


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def copy_queries(img: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """A transformed copy of a (3, H, W) image in [0, 1]."""
    h, w = img.shape[-2:]
    if kind == "crop":                                  # strong crop: 30-50% of the area
        frac = 0.3 + 0.2 * float(torch.rand((), generator=g))
        ch, cw = max(8, int(h * frac ** 0.5)), max(8, int(w * frac ** 0.5))
        y = int(torch.randint(0, h - ch + 1, (), generator=g))
        x = int(torch.randint(0, w - cw + 1, (), generator=g))
        return TF.resize(img[:, y:y + ch, x:x + cw], [h, w], antialias=True)
    if kind == "rotate":
        return torch.rot90(img, k=int(torch.randint(1, 4, (), generator=g)), dims=(1, 2))
    if kind == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        TF.to_pil_image(img).save(buf, format="JPEG", quality=10)
        return TF.to_tensor(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "colour":
        out = TF.adjust_hue(img, 0.15 + 0.2 * float(torch.rand((), generator=g)))
        return TF.adjust_brightness(TF.adjust_saturation(out, 0.6), 1.2).clamp(0, 1)
    raise ValueError(f"copy_queries: kind must be one of {TRANSFORMS}, got {kind!r}")


def copy_benchmark(images, num_sources: int, seed: int = 0):
    """(queries, query source index, query kind) over the first ``num_sources`` images."""
    g = torch.Generator().manual_seed(seed)
    queries, targets, kinds = [], [], []
    for i in range(num_sources):
        for kind in TRANSFORMS:
            queries.append(copy_queries(images[i], kind, g))
            targets.append(i)
            kinds.append(kind)
    return queries, torch.tensor(targets), kinds


def copy_map(model, queries, targets, gallery, size, device) -> float:
    tf = eval_transform("rect", size)
    q = embed_images(model, queries, tf, device)
    g = embed_images(model, gallery, tf, device)
    return instance_map(q, g, targets, torch.arange(len(gallery)), ap="trapezoid")["map"]


def measure(model, test, bench, size, device) -> dict:
    images, labels = test
    return {"acc": accuracy(model, images, labels, size, device),
            "copy_map": copy_map(model, bench[0], bench[1], images, size, device)}


def top5_picture(model, bench, gallery, size, device, path, rows: int = 4):
    """Queries (one per transform) with their top-5 gallery images; the true source boxed green."""
    import numpy as np
    from PIL import Image, ImageDraw

    tf = eval_transform("rect", size)
    picks = list(range(rows))                           # source 0: crop, rotate, jpeg, colour
    q = embed_images(model, [bench[0][i] for i in picks], tf, device)
    g = embed_images(model, gallery, tf, device)
    _, ids = knn(q, g, 5)
    cell, pad = 64, 4
    canvas = Image.new("RGB", (pad + 6 * (cell + pad) + pad, pad + rows * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(img, r, c, colour=None):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        x, y = pad + c * (cell + pad) + (pad if c else 0), pad + r * (cell + pad)
        canvas.paste(Image.fromarray(arr).resize((cell, cell)), (x, y))
        if colour:
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=colour, width=2)

    for r, qi in enumerate(picks):
        paste(bench[0][qi], r, 0)
        for c, gi in enumerate(ids[r].tolist()):
            paste(gallery[gi], r, c + 1, "green" if gi == int(bench[1][qi]) else "red")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def table(rows: dict) -> str:
    cols = (f"{TRAIN_RES}", f"{TEST_RES}", f"{TEST_RES} p*", f"{TEST_RES} p*+whiten")
    keys = ("train", "test", "pstar", "white")
    lines = ["| run | p* | " + " | ".join(f"acc {c}" for c in cols) + " | " + " | ".join(f"copy mAP {c}" for c in cols)
             + " |", "|---" * (2 + 2 * len(cols)) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['pstar_value']:.2f} | " + " | ".join(f"{r[k]['acc']:.1f}" for k in keys) + " | "
                     + " | ".join(f"{r[k]['copy_map']:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def verdicts(rows: dict) -> list:
    avg, gem, ra, mg = (rows[k] for k in RUNS)
    checks = [
        ("GeM p=3 beats average pooling in copy detection (lambda=1, 32 px)",
         gem["train"]["copy_map"] > avg["train"]["copy_map"]),
        ("the margin loss + RA (lambda=0.5) beats CE only in copy detection (GeM p=3, 32 px)",
         mg["train"]["copy_map"] > gem["train"]["copy_map"]),
        ("the margin loss, not RA alone, makes the difference (lambda=0.5 + RA beats lambda=1 + RA, copy mAP)",
         mg["train"]["copy_map"] > ra["train"]["copy_map"]),
        ("repeated augmentation does not cost CE accuracy (lambda=1 + RA within 2 points of lambda=1)",
         ra["train"]["acc"] >= gem["train"]["acc"] - 2),
        ("lambda=0.5 keeps the classification accuracy within 2 points of CE only (32 px)",
         mg["train"]["acc"] >= gem["train"]["acc"] - 2),
        ("p* at the higher test resolution raises accuracy over the training p at 48 px (lambda=0.5)",
         mg["pstar"]["acc"] > mg["test"]["acc"]),
        ("PCA whitening raises copy-detection mAP (lambda=0.5, 48 px, p*)",
         mg["white"]["copy_map"] > mg["pstar"]["copy_map"]),
        ("whitening keeps the classifier's predictions (same accuracy)",
         abs(mg["white"]["acc"] - mg["pstar"]["acc"]) < 1e-9),
    ]
    return [f"- {'reproduces' if ok else 'does NOT reproduce'}: {claim}" for claim, ok in checks]


def run(run_dir="runs/multigrain-demo", overrides=(), out=print, device=None, quick: bool = False,
        picture=None) -> dict:
    from fusedembed.trainer import load_model, train

    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    base = [f"trainer.device={device}"] if device else []
    dev = resolve_device(device or "auto", what="--device")
    out(f"MultiGrain demo on {dev} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs), run directory {run_dir}")
    n_test, n_sources = (60, 8) if quick else (300, 60)
    recipe = load_recipe(RECIPE, [*base, *overrides])
    data_cfg = dict(recipe.data.val)
    test_set = build("dataset", {**data_cfg, "num_images": n_test, "scenes_split": "test"}, split="test")
    test = ([test_set.base(i) for i in range(len(test_set))], test_set.labels.tolist())
    val_set = build("dataset", data_cfg, split="val")
    held_out = [val_set.base(i) for i in range(len(val_set))]
    train_set = build("dataset", recipe.data.train, split="train")
    chosen = select_per_class(train_set.labels.tolist(), 50)
    ptrain = ([train_set.base(i) for i in chosen], [int(train_set.labels[i]) for i in chosen])
    bench = copy_benchmark(test[0], n_sources)
    counts = torch.bincount(test_set.labels, minlength=4).tolist()
    out(f"task: number of objects (4 classes); train {len(train_set)}, test {n_test} (class counts {counts}), "
        f"held-out whitening set {len(held_out)}, p* set {len(chosen)}; copy detection: {len(bench[0])} queries "
        f"({', '.join(TRANSFORMS)} of {n_sources} test images), gallery {n_test}")
    rows = {}
    for name, extra in RUNS.items():
        recipe = load_recipe(RECIPE, [*base, *extra, *overrides])
        t = time.perf_counter()
        train(recipe, run_dir / _slug(name), out=lambda line, n=name: out(f"  [{n}] {line}"))
        model = load_model(recipe, run_dir / _slug(name) / "last.pt", device=dev)
        r = {"train": measure(model, test, bench, TRAIN_RES, dev), "test": measure(model, test, bench, TEST_RES, dev)}
        r["pstar_value"] = finetune_p(model, *ptrain, TEST_RES, device=dev)
        r["pstar"] = measure(model, test, bench, TEST_RES, dev)
        whiten_model(model, held_out, TEST_RES, dev)
        r["white"] = measure(model, test, bench, TEST_RES, dev)
        rows[name] = r
        out(f"  [{name}] trained and measured in {time.perf_counter() - t:.0f} s; p* = {r['pstar_value']:.2f}")
        if name == list(RUNS)[-1] and picture is not False:
            path = top5_picture(model, bench, test[0], TEST_RES, dev, Path(picture or run_dir / "top5.png"))
            out(f"  top-5 picture: {path}")
    chance = 100 * max(counts) / sum(counts)
    out("\n" + table(rows))
    out(f"\nacc: top-1 % on the {n_test} test images (majority class {chance:.1f}%); copy mAP: % (Holidays trapezoid AP, "
        f"one relevant image per query); columns: test resolution (trained at {TRAIN_RES}), p* fine-tuned at "
        f"{TEST_RES}, then whitening fitted on the held-out split.\n")
    for line in verdicts(rows):
        out(line)
    out(f"\ntotal {time.perf_counter() - start:.0f} s")
    (run_dir / "results.yaml").write_text(yaml.safe_dump(rows, sort_keys=False))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fusedembed demo multigrain", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/multigrain-demo", help="replaced when it holds an earlier run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of every run")
    p.add_argument("--picture", default=None, help="where to write the top-5 picture (default: RUN_DIR/top5.png)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny sizes; numbers meaningless)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of multigrain/scenes")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    run(args.run_dir, [f"trainer.seed={args.seed}", *(QUICK if args.quick else []), *args.overrides],
        out=lambda line: print(line, flush=True), device=args.device, quick=args.quick, picture=args.picture)
    return 0


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_multigrain.demo")
