"""The authors' train / val / test image lists, written from the user's own files.

``python -m fusedembed_dualpath.splits flickr30k KARPATHY_JSON OUT_DIR --flickr8k-test
Flickr_8k.testImages.txt --flickr8k-dev Flickr_8k.devImages.txt``: as ``split_Flickr30k.m``,
the Flickr30k images whose photo id (the file name before ``.jpg``) opens a line of the
Flickr8k test list are the test set, of the dev list the val set, the rest (29,783) train.

``python -m fusedembed_dualpath.splits coco KARPATHY_JSON OUT_DIR [--seed 1]``: as the
authors' ``prepare_imdb.m``, every train2014 + val2014 image; 10,000 drawn at random, of which
5,000 are test and 5,000 val; the rest (113,287) train. The draw is seeded but is not MATLAB's
``rng(1); randperm``, so the images differ from the authors' own.

Each list is ``OUT_DIR/{train,val,test}.txt``, one image file name a line: what the datasets'
``split_lists`` read.
"""

import argparse
import os
from pathlib import Path

import torch

from fusedembed.data import DataError, read_json, read_text
from fusedembed.errors import run_command


def _file_names(json_path) -> list:
    doc = read_json(json_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(json_path, None, "expected an object with an 'images' list (Karpathy split layout)")
    names = [e.get("filename") for e in doc["images"] if isinstance(e, dict)]
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(json_path, None, "every image needs a 'filename' (str)")
    return names


def _photo_ids(list_path) -> set:
    """Flickr8k list lines such as ``3385593926_d3e9c21170.jpg``: the photo id before ``_``."""
    lines = [line.strip() for line in read_text(list_path).splitlines() if line.strip()]
    if not lines:
        raise DataError(list_path, None, "empty list")
    return {line.split("_")[0] for line in lines}


def flickr30k_split(names, test_ids: set, dev_ids: set) -> dict:
    out = {"train": [], "val": [], "test": []}
    for name in names:
        photo = os.path.splitext(name)[0]
        out["test" if photo in test_ids else "val" if photo in dev_ids else "train"].append(name)
    return out


COCO_HELD_OUT = 10_000   # the authors' seeded random 5,000 val + 5,000 test


def coco_split(names, seed: int = 1, held_out: int = COCO_HELD_OUT) -> dict:
    if held_out > len(names) or held_out % 2:
        raise ValueError(f"coco split: held_out must be even and at most the {len(names)} images, got {held_out}")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    val, test = set(order[:held_out // 2]), set(order[held_out // 2:held_out])
    return {"train": [n for i, n in enumerate(names) if i not in val and i not in test],
            "val": [names[i] for i in sorted(val)], "test": [names[i] for i in sorted(test)]}


def write(split: dict, out_dir) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in split.items():
        (out_dir / f"{name}.txt").write_text("".join(f"{n}\n" for n in items))
    return {name: len(items) for name, items in split.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m fusedembed_dualpath.splits",
                                description="Write the dual-path authors' split lists.")
    p.add_argument("dataset", choices=("flickr30k", "coco"))
    p.add_argument("karpathy_json")
    p.add_argument("out_dir")
    p.add_argument("--flickr8k-test", help="Flickr_8k.testImages.txt (flickr30k)")
    p.add_argument("--flickr8k-dev", help="Flickr_8k.devImages.txt (flickr30k)")
    p.add_argument("--seed", type=int, default=1, help="coco: seed of the 10,000 held-out images")
    args = p.parse_args(argv)
    names = _file_names(args.karpathy_json)
    if args.dataset == "flickr30k":
        if not (args.flickr8k_test and args.flickr8k_dev):
            p.error("flickr30k needs --flickr8k-test and --flickr8k-dev (the Flickr8k list files)")
        split = flickr30k_split(names, _photo_ids(args.flickr8k_test), _photo_ids(args.flickr8k_dev))
    else:
        if len(names) <= COCO_HELD_OUT:
            raise DataError(args.karpathy_json, None, f"coco: expected more than the {COCO_HELD_OUT:,} images held "
                            f"out for val and test, got {len(names):,} (is it dataset_coco.json?)")
        split = coco_split(names, args.seed)
    counts = write(split, args.out_dir)
    print(f"{args.dataset}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" images in {args.out_dir}")
    return counts


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_dualpath.splits")
