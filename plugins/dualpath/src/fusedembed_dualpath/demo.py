"""The dual-path demo (``make demo``): trains ``dualpath/scenes`` (Stage I, then Stage II)
through the trainer, then on the test split prints the retrieval table of the model next to
chance and the bag-of-words + CCA baseline, and adds the table and a picture of retrieval
examples to the run's report.

    fusedembed demo dualpath [--run-dir runs/demo] [OVERRIDES ...]
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

from .baseline import BowCCA
from .evaluator import RetrievalEvaluator, encode
from .report import chance_metrics, retrieval_examples, table

RECIPE = "dualpath/scenes"


def test_embeddings(recipe, checkpoint, device):
    """(test dataset, image embeddings, caption embeddings, caption_to_image) of a checkpoint."""
    from fusedembed.trainer import eval_loader, load_model

    model = load_model(recipe, checkpoint, device=device)
    test_set = build("dataset", recipe.data.test, split="test")
    return (test_set, *encode(model, eval_loader(test_set, recipe), device=device))


def run(run_dir="runs/demo", overrides=(), out=print) -> dict:
    from fusedembed.trainer import train

    recipe = load_recipe(RECIPE, list(overrides))
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():        # an earlier demo run: start afresh, not append to it
        shutil.rmtree(run_dir)
    device = resolve_device(recipe.trainer.device, what="trainer.device")
    out(f"dual-path demo: {RECIPE} on {device} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs), "
        f"run directory {run_dir}")
    start, cpu_start = time.perf_counter(), time.process_time()
    train(recipe, run_dir, out=lambda line: out("  " + line))
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    test_set, img, txt, g = test_embeddings(recipe, run_dir / "last.pt", device)
    evaluator = RetrievalEvaluator()
    model_m = evaluator.metrics(img, txt, g)
    train_pairs = build("dataset", {**recipe.data.train, "view": "pair"}, split="train")
    bow_img, bow_txt = BowCCA().fit(train_pairs).embed(test_set)
    rows = [("chance (exact expectation)", chance_metrics(g)),
            ("BoW tf-idf + colour features, CCA", evaluator.metrics(bow_img, bow_txt, g)),
            ("dual-path (trained)", model_m)]
    text = (f"test split: {test_set.num_images} images, {test_set.num_captions} captions; recalls in %, "
            f"i2t = image→text, t2i = text→image\n\n{table(rows)}\n\ntraining (Stage I + Stage II, with their "
            f"evaluations): {train_s:.0f} s wall, {cpu_s:.0f} s CPU time, {device}, {torch.get_num_threads()} threads; "
            f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (above {os.cpu_count()}: "
            f"the machine was shared)")
    out("\n" + text)
    picture = retrieval_examples(img, txt, g, test_set, run_dir / "retrieval_examples.png")
    report = run_dir / "report.md"
    with open(report, "a", encoding="utf-8") as f:
        f.write(f"\n## Test retrieval (demo)\n\n{text}\n\nBaseline: {BowCCA.__module__} — tf-idf bag of words of "
                f"the captions and a colour histogram + 16x16 thumbnail of the images, matched by regularised "
                f"CCA fitted on the same training pairs.\n\n![retrieval examples]({picture.name})\n")
    out(f"\nwrote {report}, {run_dir / 'loss.png'}, {run_dir / 'eval.png'}, {picture}")
    return {"model": model_m, "baseline": rows[1][1], "chance": rows[0][1], "train_seconds": train_s,
            "train_cpu_seconds": cpu_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fusedembed demo dualpath", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/demo", help="replaced when it holds an earlier run")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of dualpath/scenes")
    args = p.parse_args(argv)
    run(args.run_dir, args.overrides, out=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_dualpath.demo")
