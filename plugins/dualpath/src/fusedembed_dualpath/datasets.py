"""The recipe's datasets: Flickr30k / MSCOCO (Karpathy split JSON, or the authors' split
lists) and CUHK-PEDES (``reid_raw.json``, identity = class). All are caption datasets of
fusedembed (views ``image`` / ``pair`` / ``text``, ``caption_to_image``), so the trainer,
the collate and the retrieval evaluator work on them unchanged; the demo uses the built-in
``scenes`` as it is.
"""

import json
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from fusedembed.data import (
    DataError,
    ImageCaptionDataset,
    Vocab,
    karpathy,
    normalize_token,
    read_text,
    tokenize,
)

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class ImageTransform:
    """Float CHW image in [0, 1] → ImageNet-normalised ``size`` × ``size``. Training: resized
    to ``size * 8 / 7`` (256 for 224), a random ``size`` crop and a random mirror."""

    def __init__(self, size: int = 224, train: bool = False, flip: bool = True):
        if size < 8:
            raise ValueError(f"image_size must be >= 8, got {size}")
        self.size, self.train, self.flip = size, train, flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if not self.train:
            image = TF.resize(image, [self.size, self.size], antialias=True)
        else:
            big = self.size * 8 // 7
            image = TF.resize(image, [big, big], antialias=True)
            y, x = (int(v) for v in torch.randint(big - self.size + 1, (2,)))
            image = image[:, y:y + self.size, x:x + self.size]
            if self.flip and bool(torch.rand(()) < 0.5):
                image = image.flip(-1)
        return (image - MEAN) / STD


def _read_list(path) -> list:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, None, "split list not found")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def shared_vocab(vocab_path: Optional[str], build) -> Vocab:
    """The vocabulary at ``vocab_path`` when it exists; else ``build()``, saved there (when a
    path is given) so that the text backbone's ``vocab_path`` sizes its embedding from it."""
    if vocab_path and Path(vocab_path).expanduser().is_file():
        return Vocab.load(Path(vocab_path).expanduser())
    vocab = build()
    if vocab_path:
        Path(vocab_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        vocab.save(Path(vocab_path).expanduser())
    return vocab


def _authors_split(json_path, image_root, split, split_lists: Dict[str, str], view, transform, min_count,
                   vocab_path):
    """The images named in ``split_lists[split]`` (file names, one per line), from every
    Karpathy split of the JSON; the vocabulary comes from the ``train`` list's captions."""
    for needed in ("train", split):
        if needed not in split_lists:
            raise ValueError(f"split_lists must name a list for {needed!r}, got keys {sorted(split_lists)}")
    full = karpathy(json_path, image_root, split="train+restval+val+test", view=view, min_count=1)
    by_name = {os.path.basename(p): i for i, p in enumerate(full.paths)}

    def pick(name):
        chosen = []
        for n, fname in enumerate(_read_list(split_lists[name]), 1):
            if fname not in by_name:
                raise DataError(split_lists[name], f"line {n}", f"image {fname!r} is not in {json_path}")
            chosen.append(by_name[fname])
        return chosen

    def captions(i):
        return [full.texts[j] for j in full.captions_of(i)]

    vocab = shared_vocab(vocab_path, lambda: Vocab.build([tokenize(c) for i in pick("train") for c in captions(i)],
                                                         min_count=min_count))
    chosen = pick(split)
    return ImageCaptionDataset([full.paths[i] for i in chosen], [full.sources[i] for i in chosen],
                               [captions(i) for i in chosen], [[tokenize(c) for c in captions(i)] for i in chosen],
                               vocab, view, transform)


def _karpathy_factory(train_splits: str, captions_per_image: Optional[int], what: str):
    def factory(split: str, json_path: str, image_root: str, image_size: int = 224, view: str = "image",
                train_flip: bool = True, min_count: int = 1, split_lists: Optional[Dict[str, str]] = None,
                vocab_path: Optional[str] = None, skip_bad: bool = False):
        transform = ImageTransform(image_size, train=split == "train", flip=train_flip)
        if split_lists:
            return _authors_split(json_path, image_root, split, split_lists, view, transform, min_count, vocab_path)
        vocab = None
        if vocab_path:
            vocab = shared_vocab(vocab_path, lambda: karpathy(json_path, image_root, split=train_splits,
                                                              min_count=min_count, skip_bad=True).vocab)
        return karpathy(json_path, image_root, split=train_splits if split == "train" else split, view=view,
                        vocab=vocab, min_count=min_count, captions_per_image=captions_per_image,
                        transform=transform, skip_bad=skip_bad)

    factory.__doc__ = (f"{what} from the Karpathy split JSON (or the authors' split lists), resized and "
                       f"ImageNet-normalised")
    return factory


flickr30k = _karpathy_factory("train", None, "Flickr30k")
coco = _karpathy_factory("train+restval", 5, "MSCOCO (train+restval: 113,287 training images)")


class PedesDataset(ImageCaptionDataset):
    """CUHK-PEDES: ``instance`` is the person's identity (contiguous within the split: the
    instance loss's class); ``image_index`` is the image's position."""

    def __init__(self, identities, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.identities = torch.as_tensor(identities, dtype=torch.long)
        self.num_identities = int(self.identities.max()) + 1 if len(self.identities) else 0

    def __getitem__(self, idx: int) -> dict:
        item = super().__getitem__(idx)
        item["image_index"] = item["instance"]
        item["instance"] = int(self.identities[item["instance"]])
        return item


def cuhk_pedes(split: str, json_path: str, image_root: str, image_size: int = 224, view: str = "image",
               train_flip: bool = True, min_count: int = 1, vocab_path: Optional[str] = None) -> PedesDataset:
    """CUHK-PEDES from its ``reid_raw.json`` (identity = class)."""
    records = json.loads(read_text(json_path))
    if not isinstance(records, list):
        raise DataError(json_path, None, f"expected a list of records, got {type(records).__name__}")
    rows = []
    for k, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("file_path"), str) and isinstance(r.get("captions"), list)
                and "id" in r and isinstance(r.get("split"), str)):
            raise DataError(json_path, f"[{k}]", "needs 'file_path' (str), 'captions' (list), 'id' and 'split'")
        tokens = r.get("processed_tokens") or [tokenize(c) for c in r["captions"]]
        rows.append((r["split"], os.path.join(image_root, r["file_path"]), (str(json_path), f"[{k}]"),
                     r["captions"], [[normalize_token(t) for t in s] for s in tokens], r["id"]))
    vocab = shared_vocab(vocab_path, lambda: Vocab.build([t for row in rows if row[0] == "train" for t in row[4]],
                                                         min_count=min_count))
    chosen = [row for row in rows if row[0] == split]
    if not chosen:
        raise DataError(json_path, None, f"no records of split {split!r}")
    ids = sorted({row[5] for row in chosen})
    index = {v: i for i, v in enumerate(ids)}
    return PedesDataset([index[row[5]] for row in chosen], [row[1] for row in chosen], [row[2] for row in chosen],
                        [row[3] for row in chosen], [row[4] for row in chosen], vocab, view,
                        ImageTransform(image_size, train=split == "train", flip=train_flip))


def main(argv=None) -> None:
    """``python -m fusedembed_dualpath.datasets RECIPE [OVERRIDES]``: builds the recipe's training
    set once, which writes its vocabulary to ``vocab_path`` (the text backbone reads it)."""
    import argparse

    from fusedembed import build, load_recipe

    p = argparse.ArgumentParser(prog="python -m fusedembed_dualpath.datasets", description=main.__doc__)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides, check=False)
    data = build("dataset", recipe.data.train, split="train")
    print(f"{args.recipe}: {data.num_images} training images, {data.num_captions} captions, "
          f"vocabulary of {len(data.vocab)} at {recipe.data.train.get('vocab_path')}")


if __name__ == "__main__":
    main()
