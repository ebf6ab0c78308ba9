"""`fusedembed demo alignment`: Karpathy & Fei-Fei's alignment model at CPU scale on the scenes.

Trains ``alignment/scenes`` (regions = the whole image + the scene's object boxes, BRNN words,
S_kl, the summed bidirectional ranking loss) and, as the bag-of-words baseline, the same
recipe with the whole image as its only region and no recurrence (S_kl = the image vector
dotted with the sum of independent word vectors). On the test split it prints:

- retrieval (i2t: the best of an image's 5 captions, t2i: the caption's image) for both models
  next to the exact chance rates;
- word -> region accuracy and snippet precision / recall of the MRF decode of each test image
  with its own captions, swept over beta, next to the chance rate (a uniformly drawn region)
  and the "nearest region to the sentence" baseline (all words on the region that scores best
  against the whole sentence);

and writes ``alignment_beta.png`` (accuracy vs beta) and ``snippets.png`` (test images with
their boxes labelled by the decoded snippets) to the run directory.

    fusedembed demo alignment [--run-dir runs/alignment_demo] [--quick] [OVERRIDES ...]
"""

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from fusedembed import build, load_recipe
from fusedembed.devices import resolve_device
from fusedembed.errors import run_command
from fusedembed.metrics import alignment_metrics, chance_retrieval_metrics

from .align import decode, draw_snippets, snippets
from .evaluator import RetrievalEvaluator, encode

RECIPE = "alignment/scenes"
BOW = ["model.max_boxes=0", "model.recurrent=false"]
BETAS = (-1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 100.0)
QUICK = ["data.train.num_images=200", "data.val.num_images=50", "data.test.num_images=50", "trainer.epochs=1"]
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")


def region_truth(enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per caption, the region each word describes (object o is region o + 1; -1: no region) and
    per caption the region groups of its image (the whole image a group of its own)."""
    g = enc["caption_to_image"]
    wo = enc["word_objects"]
    truth = torch.where(wo >= 0, wo + 1, -1)
    obj_groups = enc["object_groups"][g]
    groups = torch.cat([torch.zeros(len(g), 1, dtype=torch.long),
                        torch.where(obj_groups >= 0, obj_groups + 1, -1)], 1)
    M = enc["regions"].shape[1]
    groups = torch.nn.functional.pad(groups, (0, max(0, M - groups.shape[1])), value=-1)[:, :M]
    return truth, groups


def pair_tensors(enc: dict):
    """Regions, region counts, words and lengths of every (test image, own caption) pair."""
    g = enc["caption_to_image"]
    return enc["regions"][g], enc["num_regions"][g], enc["words"], enc["lengths"]


def chance_accuracy(truth, groups, num_regions, lengths) -> float:
    """Expected word accuracy (%) of a region drawn uniformly per word among the image's regions."""
    T = truth.shape[1]
    inside = torch.arange(T)[None, :] < lengths[:, None]
    grounded = inside & (truth >= 0)
    tg = torch.where(grounded, groups.gather(1, truth.clamp(min=0)), -2)
    valid = torch.arange(groups.shape[1])[None, :] < num_regions[:, None]
    same = ((groups[:, None, :] == tg[..., None]) & valid[:, None, :]).sum(2).float()
    return float((same / num_regions[:, None].float())[grounded].mean() * 100)


def nearest_region(regions, num_regions, words, lengths) -> torch.Tensor:
    """Every word of a sentence on the region that scores best against the whole sentence."""
    T = words.shape[1]
    inside = torch.arange(T)[None, :] < lengths[:, None]
    per_region = torch.einsum("bmd,btd->bm", regions, words * inside[..., None])
    valid = torch.arange(regions.shape[1])[None, :] < num_regions[:, None]
    best = per_region.masked_fill(~valid, float("-inf")).argmax(1)
    return torch.where(inside, best[:, None], -1)


def alignment_table(enc: dict) -> tuple[list, dict, dict]:
    regions, counts, words, lengths = pair_tensors(enc)
    truth, groups = region_truth(enc)
    rows = []
    for beta in BETAS:
        assignment, _ = decode(regions, words, beta, counts, lengths)
        rows.append((beta, alignment_metrics(assignment, truth, lengths, groups)))
    near = alignment_metrics(nearest_region(regions, counts, words, lengths), truth, lengths, groups)
    chance = chance_accuracy(truth, groups, counts, lengths)
    return rows, near, {"word_accuracy": chance}


def _fmt(v) -> str:
    return f"{v:6.1f}" if isinstance(v, float) else f"{v:>6}"


def retrieval_table(rows) -> str:
    head = f"{'':34s}" + "".join(f"{k:>10s}" for k in KEYS)
    lines = [head] + [f"{name:34s}" + "".join(f"{m[k]:10.1f}" if k in m else f"{'-':>10s}" for k in KEYS)
                      for name, m in rows]
    return "\n".join(lines)


def beta_table(rows, near, chance) -> str:
    lines = [f"{'':34s}{'word acc':>10s}{'snip prec':>10s}{'snip rec':>10s}{'snippets':>10s}"]
    for beta, m in rows:
        lines.append(f"{'MRF beta = ' + format(beta, 'g'):34s}{m['word_accuracy']:10.1f}"
                     f"{m['snippet_precision']:10.1f}{m['snippet_recall']:10.1f}{m['num_snippets']:10.0f}")
    lines.append(f"{'nearest region to the sentence':34s}{near['word_accuracy']:10.1f}"
                 f"{near['snippet_precision']:10.1f}{near['snippet_recall']:10.1f}{near['num_snippets']:10.0f}")
    lines.append(f"{'chance (uniform region per word)':34s}{chance['word_accuracy']:10.1f}")
    return "\n".join(lines)


def beta_plot(rows, near, chance, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("word_accuracy", "word -> region accuracy"), ("snippet_precision", "snippet precision"),
                       ("snippet_recall", "snippet recall")):
        ax.plot(xs, [m[key] for _, m in rows], marker="o", label=label)
    ax.axhline(near["word_accuracy"], ls="--", c="grey", label="nearest region (accuracy)")
    ax.axhline(chance["word_accuracy"], ls=":", c="k", label="chance (accuracy)")
    ax.set_xticks(xs, [format(b, "g") for b, _ in rows])
    ax.set_xlabel("beta")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def snippet_picture(test_set, enc: dict, beta: float, path: Path, count: int = 6) -> Path:
    """The first ``count`` test images side by side, each with its first caption's snippets
    drawn on their boxes."""
    from PIL import Image

    g = enc["caption_to_image"]
    first = [int((g == i).nonzero()[0]) for i in range(min(count, test_set.num_images))]
    regions, counts, words, lengths = (t[first] for t in pair_tensors(enc))
    assignment, _ = decode(regions, words, beta, counts, lengths)
    texts = [test_set.vocab.decode(test_set.tokens_of(j).tolist()) for j in first]
    tiles = [draw_snippets(test_set.load_image(int(g[j])), test_set.boxes(int(g[j])), runs)
             for j, runs in zip(first, snippets(regions, words, assignment, texts))]
    sheet = Image.new("RGB", (sum(t.width + 10 for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 10
    sheet.save(path)
    return path


def test_encoding(recipe, checkpoint, device):
    from fusedembed.trainer import eval_loader, load_model

    model = load_model(recipe, checkpoint, device=device)
    test_set = build("dataset", recipe.data.test, split="test")
    return test_set, encode(model, eval_loader(test_set, recipe), device=device,
                            keep_image=("object_groups",), keep_text=("word_objects",))


def run(run_dir="runs/alignment_demo", overrides=(), out=print, quick: bool = False) -> dict:
    from fusedembed.trainer import train

    overrides = [*(QUICK if quick else ()), *overrides]
    run_dir = Path(run_dir)
    if run_dir.exists() and any((run_dir / n / "config.yaml").is_file() for n in ("alignment", "bow")):
        shutil.rmtree(run_dir)              # an earlier demo run: start afresh, not append to it
    results, encodings, seconds = {}, {}, {}
    test_set = None
    for name, extra in (("alignment", []), ("bow", BOW)):
        recipe = load_recipe(RECIPE, [*overrides, *extra])
        device = resolve_device(recipe.trainer.device, what="trainer.device")
        out(f"alignment demo [{name}]: {RECIPE} {' '.join(extra)} on {device} ({torch.get_num_threads()} threads)")
        start = time.perf_counter()
        train(recipe, run_dir / name, out=lambda line, n=name: out(f"  [{n}] {line}"))
        seconds[name] = time.perf_counter() - start
        test_set, encodings[name] = test_encoding(recipe, run_dir / name / "last.pt", device)
        ev = RetrievalEvaluator()
        results[name] = ev.metrics(ev.scores(encodings[name]), encodings[name]["caption_to_image"])
    chance = chance_retrieval_metrics(test_set.num_images, 5)
    rows = [("chance (exact expectation)", chance),
            ("bag of words x whole image", results["bow"]),
            ("regions x BRNN (the paper's model)", results["alignment"])]
    beta_rows, near, word_chance = alignment_table(encodings["alignment"])
    best = max(beta_rows, key=lambda r: r[1]["word_accuracy"])
    text = (f"test split: {test_set.num_images} images, {test_set.num_captions} captions; recalls in %\n\n"
            f"{retrieval_table(rows)}\n\nword -> region alignment of each test image with its own captions "
            f"(regions: the whole image + the objects; {int(best[1]['num_words'])} grounded words, "
            f"{int(best[1]['num_phrases'])} phrases):\n\n{beta_table(beta_rows, near, word_chance)}\n\n"
            f"best word accuracy {best[1]['word_accuracy']:.1f}% at beta = {best[0]:g}; training "
            f"{seconds['alignment']:.0f} s (model) + {seconds['bow']:.0f} s (baseline) wall on "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    out("\n" + text)
    pictures = [snippet_picture(test_set, encodings["alignment"], best[0], run_dir / "snippets.png")]
    try:
        pictures.append(beta_plot(beta_rows, near, word_chance, run_dir / "alignment_beta.png"))
    except ImportError:
        out("(matplotlib is not installed: no alignment_beta.png; pip install fusedembed-alignment[report])")
    with open(run_dir / "report.md", "w", encoding="utf-8") as f:
        f.write(f"# alignment demo\n\n```\n{text}\n```\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pictures))
    out(f"\nwrote {run_dir / 'report.md'}, " + ", ".join(str(p) for p in pictures))
    return {"retrieval": results, "chance": chance, "beta": beta_rows, "nearest": near, "word_chance": word_chance,
            "best_beta": best[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fusedembed demo alignment", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/alignment_demo", help="replaced when it holds an earlier run")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (200 train images, 1 epoch)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of alignment/scenes")
    args = p.parse_args(argv)
    run(args.run_dir, args.overrides, out=lambda line: print(line, flush=True), quick=args.quick)
    return 0


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_alignment.demo")
