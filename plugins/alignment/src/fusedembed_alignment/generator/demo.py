"""The generator demo: trains the multimodal RNN on the embedded scenes (``alignment/
generator_scenes``) and the region generator on box crops and their snippets
(``alignment/generator_scenes_regions``) through the trainer, then on the test split prints
BLEU-4 / CIDEr-D (and BLEU-1..3, ROUGE-L, METEOR when java is there) of greedy decoding, beam
search (k = 3) and the nearest-neighbour baseline, and draws test images with their generated
captions and boxes with their region captions.

    fusedembed demo generator [--run-dir runs/generator] [--train-images N] [--test-images N] [--epochs E]
"""

import argparse
import shutil
import time
from pathlib import Path

import torch

from fusedembed import build, load_recipe
from fusedembed.devices import resolve_device

from .baseline import nearest_neighbour_captions
from .evaluator import describe, references
from .metrics import caption_scores

RECIPES = {"images": "alignment/generator_scenes", "regions": "alignment/generator_scenes_regions"}
COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR")


def table(rows) -> str:
    cols = [c for c in COLUMNS if all(c in m for _, m in rows)]
    lines = ["| captions | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for name, m in rows:
        # BLEU, ROUGE-L and METEOR in %, CIDEr-D as it is (the papers' convention).
        cells = [f"{m[c]:.2f}" if c == "CIDEr-D" else f"{100 * m[c]:.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipe_for(kind: str, train_images=None, test_images=None, epochs=None, overrides=()):
    """The kind's recipe with the demo's options (the region recipe's scenes sit under ``base``)."""
    at = "" if kind == "images" else "base."
    extra = list(overrides)
    if epochs is not None:
        extra.append(f"trainer.epochs={epochs}")
    if train_images is not None:
        extra.append(f"data.train.{at}num_images={train_images}")
        extra += [f"data.{split}.{at}train_images={train_images}" for split in ("val", "test")]
    if test_images is not None:
        extra.append(f"data.test.{at}num_images={test_images}")
    return load_recipe(RECIPES[kind], extra)


def evaluate_kind(recipe, run_dir: Path, device, out, meteor: bool = True):
    """Trains one recipe, then {row name: scores} on its test split, and what the pictures need."""
    from fusedembed.trainer import eval_loader, load_model, train

    start = time.perf_counter()
    train(recipe, run_dir, out=lambda line: out("    " + line))
    seconds = time.perf_counter() - start
    model = load_model(recipe, run_dir / "last.pt", device=device)
    test_set = build("dataset", {**recipe.data.test, "view": "image"}, split="test")
    train_set = build("dataset", {**recipe.data.train, "view": "image"}, split="train")
    test_loader, train_loader = eval_loader(test_set, recipe), eval_loader(train_set, recipe)
    refs = references(test_set)
    captions = {
        "greedy": describe(model, test_loader, device=device, beam_size=1),
        "beam search, k = 3": describe(model, test_loader, device=device, beam_size=3),
        "nearest neighbour (CNN features)": nearest_neighbour_captions(model, train_loader, test_loader,
                                                                        device=device),
    }
    rows, skipped = [], []
    for name, hyps in captions.items():
        scores = caption_scores({i: refs[i] for i in hyps}, hyps, use_meteor=meteor)
        skipped = scores.pop("skipped")
        rows.append((name, scores))
    return rows, skipped, captions, test_set, seconds


def picture(test_set, captions, path: Path, n: int = 6, regions: bool = False) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    picks = torch.linspace(0, test_set.num_images - 1, n).round().long().tolist()
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 5.2))
    for ax, r in zip(axes, picks):
        if regions:
            i, (x0, y0, x1, y1) = test_set.regions[r]
            ax.imshow(test_set.base.image_array(i))
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", lw=2))
        else:
            ax.imshow(test_set.load_image(r).permute(1, 2, 0).numpy())
        lines = [f"greedy: {captions['greedy'][r]}", f"beam 3: {captions['beam search, k = 3'][r]}",
                 f"NN: {captions['nearest neighbour (CNN features)'][r]}",
                 f"truth: {test_set.texts[test_set.captions_of(r).start]}"]
        ax.set_title("\n".join(_wrap(s) for s in lines), fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 42) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def run(run_dir="runs/generator", train_images=None, test_images=None, epochs=None, overrides=(), out=print,
        pictures: bool = True, meteor: bool = True) -> dict:
    run_dir = Path(run_dir)
    if run_dir.exists() and any((run_dir / k / "config.yaml").is_file() for k in RECIPES):
        shutil.rmtree(run_dir)                    # an earlier demo run: start afresh
    results, texts = {}, []
    for kind in RECIPES:
        recipe = recipe_for(kind, train_images, test_images, epochs, overrides)
        device = resolve_device(recipe.trainer.device, what="trainer.device")
        out(f"generator demo, {kind}: {RECIPES[kind]} on {device}, run directory {run_dir / kind}")
        rows, skipped, captions, test_set, seconds = evaluate_kind(recipe, run_dir / kind, device, out, meteor)
        what = "test images" if kind == "images" else "test boxes (region crops)"
        text = (f"{kind}: {test_set.num_images} {what}, {test_set.num_captions} references; BLEU, ROUGE-L, "
                f"METEOR in %\n\n{table(rows)}\n\ntraining {seconds:.0f} s on {device}"
                + (f"; {'; '.join(skipped)}" if skipped else ""))
        out("\n" + text + "\n")
        texts.append(text)
        if pictures:
            try:
                png = picture(test_set, captions, run_dir / f"{kind}_captions.png", regions=kind == "regions")
                texts.append(f"![{kind}]({png.name})")
            except ImportError:
                out("matplotlib is not installed: no picture (pip install fusedembed-alignment[report])")
        results[kind] = dict(rows)
    report = run_dir / "report.md"
    with open(report, "w", encoding="utf-8") as f:
        f.write("# Generator demo (scenes)\n\n" + "\n\n".join(texts) + "\n")
    out(f"wrote {report}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fusedembed demo generator", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/generator", help="replaced when it holds an earlier run")
    p.add_argument("--train-images", type=int, default=None, help="scenes training images (default: the recipes')")
    p.add_argument("--test-images", type=int, default=None, help="scenes test images (default: the recipes' 1000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each recipe (default: the recipes')")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of both recipes")
    args = p.parse_args(argv)
    run(args.run_dir, args.train_images, args.test_images, args.epochs, args.overrides, out=lambda line: print(line, flush=True))
    return 0
