"""The recipe's datasets: Flickr30k / MSCOCO (Karpathy split JSON, or the authors' split
lists) and CUHK-PEDES (``reid_raw.json``, identity = class). All are caption datasets of
fusedembed (views ``image`` / ``pair`` / ``text``, ``caption_to_image``), so the trainer,
the collate and the retrieval evaluator work on them unchanged; the demo uses the built-in
``scenes`` as it is.
"""

import json
import os
import re
from collections import Counter
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
from fusedembed.errors import run_command

from .word2vec import read_word2vec

TEXT_MODES = ("authors", "ours")
TEST_IMAGES = ("authors", "square")
TEST_RESIZES = ("square", "short_side")
AUTHORS_TEST_SIDE = 256           # their resize_image.m: the images every split is read from

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class ImageTransform:
    """Float CHW image in [0, 1] → ImageNet-normalised image.

    Training, as the authors' ``vl_imreadjpeg(..., 'CropSize', [0.8 1], 'CropAnisotropy',
    [3/4 4/3], 'Interpolation', 'bicubic', 'Flip')``: a crop of aspect ratio a, log-uniform in
    ``aspect``, as large as fits in the image times a side fraction s with s² uniform in
    ``crop`` squared; at a random place; resized bicubic to ``size``; mirrored half the time.
    Test: the whole, uncropped image resized bicubic (MATLAB's ``imresize``) and clipped to
    [0, 1] (the authors' resized files are 8-bit), to ``test_size`` × ``test_size``
    (``test_resize: square``) or to short side ``test_size`` with its aspect kept
    (``short_side``, the long side rounded as in the authors' COCO ``resize_image.m``);
    ``test_size`` defaults to ``size``.
    """

    def __init__(self, size: int = 224, train: bool = False, flip: bool = True, crop=(0.8, 1.0),
                 aspect=(3 / 4, 4 / 3), test_resize: str = "square", test_size: Optional[int] = None):
        if size < 8 or (test_size is not None and test_size < 8):
            raise ValueError(f"image_size and the test size must be >= 8, got {size} and {test_size}")
        if test_resize not in TEST_RESIZES:
            raise ValueError(f"test_resize must be one of {TEST_RESIZES}, got {test_resize!r}")
        crop, aspect = tuple(float(v) for v in crop), tuple(float(v) for v in aspect)
        if len(crop) != 2 or not 0 < crop[0] <= crop[1] <= 1:
            raise ValueError(f"crop must be [min, max] side fractions with 0 < min <= max <= 1, got {list(crop)}")
        if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"aspect must be [min, max] with 0 < min <= max, got {list(aspect)}")
        self.size, self.train, self.flip, self.crop, self.aspect = size, train, flip, crop, aspect
        self.test_resize, self.test_size = test_resize, test_size or size

    def test_shape(self, height: int, width: int) -> list:
        """``[height, width]`` of a ``height`` × ``width`` image at test."""
        s = self.test_size
        if self.test_resize == "square":
            return [s, s]
        if height <= width:
            return [s, max(1, round(width * s / height))]
        return [max(1, round(height * s / width)), s]

    def crop_box(self, height: int, width: int) -> tuple:
        """``(top, left, crop height, crop width)`` of one random training crop."""
        lo, hi = torch.tensor(self.aspect).log().tolist()
        a = float(torch.empty(()).uniform_(lo, hi).exp())
        cw, ch = a ** 0.5, a ** -0.5                     # the output is square
        fit = min(width / cw, height / ch)
        side = float(torch.empty(()).uniform_(self.crop[0] ** 2, self.crop[1] ** 2).sqrt())
        w = max(1, min(round(cw * fit * side), width))
        h = max(1, min(round(ch * fit * side), height))
        top, left = (int(torch.randint(n + 1, ())) for n in (height - h, width - w))
        return top, left, h, w

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if not self.train:
            image = TF.resize(image, self.test_shape(*image.shape[-2:]), interpolation=InterpolationMode.BICUBIC,
                              antialias=True).clamp_(0, 1)
        else:
            top, left, h, w = self.crop_box(*image.shape[-2:])
            image = TF.resized_crop(image, top, left, h, w, [self.size, self.size],
                                    interpolation=InterpolationMode.BICUBIC, antialias=True)
            if self.flip and bool(torch.rand(()) < 0.5):
                image = image.flip(-1)
        return (image - MEAN) / STD


def authors_tokens(caption: str, question_mark: bool = False) -> list:
    """The authors' ``strsplit(caption, {'-',' ','.',',','(',')'}, 'CollapseDelimiters', true)``
    (COCO's ``prepare_wordcnn_feature2.m`` also splits on ``?``): case kept, empty pieces gone."""
    return [w for w in re.split(r"[-\s.,()?]+" if question_mark else r"[-\s.,()]+", caption) if w]


def authors_vocab(captions, word2vec_path: Optional[str]) -> Vocab:
    """The authors' dictionary (``make_dictionary.m``): the training captions' words (split
    without ``?``) that the word2vec file has, case-sensitive; most frequent first."""
    if not word2vec_path:
        raise ValueError("text: 'authors' needs word2vec_path (the dictionary is the training words word2vec "
                         "has), got none")
    counts = Counter(w for c in captions for w in authors_tokens(c))
    have = read_word2vec(word2vec_path, set(counts))
    return Vocab(sorted(have, key=lambda w: (-counts[w], w)))


def with_authors_text(data: ImageCaptionDataset, vocab: Vocab, question_mark: bool) -> ImageCaptionDataset:
    """``data`` re-tokenised as the authors do: words the dictionary lacks are dropped (no
    ``<unk>``), before the model cuts the caption to its window."""
    captions = [[data.texts[j] for j in data.captions_of(i)] for i in range(data.num_images)]
    tokens = [[[w for w in authors_tokens(c, question_mark) if w in vocab] for c in per] for per in captions]
    return ImageCaptionDataset(data.paths, data.sources, captions, tokens, vocab, data.view, data.transform)


class WithCandidates(torch.utils.data.Dataset):
    """A training set whose items also carry ``candidate_tokens`` (k, length) and
    ``candidate_instance`` (k,): a random caption of each of k random other images, cut or
    padded to ``length`` — the pool the model mines hard negatives from (the authors draw 256
    per batch of 32: k = 8). Draws are seeded by (seed, epoch, item), so a resumed run repeats them."""

    def __init__(self, data, k: int, length: int = 32):
        if k < 1 or length < 1:
            raise ValueError(f"candidates_per_item and its length must be >= 1, got {k} and {length}")
        if data.num_images < 2:
            raise ValueError(f"candidates_per_item needs at least 2 images, got {data.num_images}")
        self.data, self.k, self.length = data, k, length

    def __getattr__(self, name):
        if name == "data":                 # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.data, name)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict:
        item = self.data[idx]
        d = self.data
        gen = torch.Generator().manual_seed((d.seed * 1_000_003 + d.epoch) * 10_000_019 + idx)
        others = torch.randint(d.num_images - 1, (self.k,), generator=gen)
        others += (others >= item["instance"]).long()          # never the item's own image
        tokens = torch.zeros(self.k, self.length, dtype=torch.long)
        for row, i in enumerate(others.tolist()):
            caps = d.captions_of(i)
            ids = d.tokens_of(caps[int(torch.randint(len(caps), (), generator=gen))])[:self.length]
            tokens[row, :len(ids)] = ids
        item["candidate_tokens"], item["candidate_instance"] = tokens, others
        return item


def test_transform_args(test_images: str, authors_resize: str) -> dict:
    """:class:`ImageTransform`'s test arguments: the authors' test images (``test_images:
    authors``: resized by ``authors_resize`` to 256, what their ``resize_image.m`` wrote) or
    ``image_size`` squares (``square``)."""
    if test_images not in TEST_IMAGES:
        raise ValueError(f"test_images must be one of {TEST_IMAGES}, got {test_images!r}")
    return {"test_resize": authors_resize, "test_size": AUTHORS_TEST_SIDE} if test_images == "authors" else {}


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


def _karpathy_factory(train_splits: str, captions_per_image: Optional[int], what: str, question_mark: bool):
    def factory(split: str, json_path: str, image_root: str, image_size: int = 224, view: str = "image",
                train_flip: bool = True, min_count: int = 1, split_lists: Optional[Dict[str, str]] = None,
                vocab_path: Optional[str] = None, skip_bad: bool = False, text: str = "ours",
                word2vec_path: Optional[str] = None, candidates_per_item: int = 0, test_images: str = "square"):
        if candidates_per_item and split == "train":
            data = factory(split, json_path, image_root, image_size, view, train_flip, min_count, split_lists,
                           vocab_path, skip_bad, text, word2vec_path, 0, test_images)
            return WithCandidates(data, candidates_per_item)
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, got {text!r}")
        # Flickr30k and COCO: resize_image.m keeps the aspect, short side 256
        transform = ImageTransform(image_size, train=split == "train", flip=train_flip,
                                   **test_transform_args(test_images, "short_side"))
        if text == "authors":
            def train_set():
                if split_lists:
                    return _authors_split(json_path, image_root, "train", split_lists, view, transform, 1, None)
                return karpathy(json_path, image_root, split=train_splits, min_count=1, skip_bad=True)

            vocab = shared_vocab(vocab_path, lambda: authors_vocab(train_set().texts, word2vec_path))
            data = (_authors_split(json_path, image_root, split, split_lists, view, transform, 1, None) if split_lists
                    else karpathy(json_path, image_root, split=train_splits if split == "train" else split, view=view,
                                  min_count=1, captions_per_image=captions_per_image, transform=transform,
                                  skip_bad=skip_bad))
            return with_authors_text(data, vocab, question_mark)
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
                       f"ImageNet-normalised; test_images: 'authors' (short side 256, aspect kept, as their "
                       f"resize_image.m) or 'square' (image_size x image_size)")
    return factory


flickr30k = _karpathy_factory("train", None, "Flickr30k", question_mark=False)
coco = _karpathy_factory("train+restval", 5, "MSCOCO (train+restval: 113,287 training images)", question_mark=True)


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
               train_flip: bool = True, min_count: int = 1, vocab_path: Optional[str] = None, text: str = "ours",
               word2vec_path: Optional[str] = None, test_images: str = "square") -> PedesDataset:
    """CUHK-PEDES from its ``reid_raw.json`` (identity = class). ``text``: "authors" (their
    split, case kept, dictionary = training words in word2vec, other words dropped) or "ours"
    (the file's lower-cased ``processed_tokens``, every training word). ``test_images``:
    "authors" (256 × 256, as their CUHK-PEDES ``resize_image.m``) or "square" (``image_size``)."""
    if text not in TEXT_MODES:
        raise ValueError(f"text must be one of {TEXT_MODES}, got {text!r}")
    transform = ImageTransform(image_size, train=split == "train", flip=train_flip,
                               **test_transform_args(test_images, "square"))
    records = json.loads(read_text(json_path))
    if not isinstance(records, list):
        raise DataError(json_path, None, f"expected a list of records, got {type(records).__name__}")
    rows = []
    for k, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("file_path"), str) and isinstance(r.get("captions"), list)
                and "id" in r and isinstance(r.get("split"), str)):
            raise DataError(json_path, f"[{k}]", "needs 'file_path' (str), 'captions' (list), 'id' and 'split'")
        if text == "authors":
            tokens = [authors_tokens(c) for c in r["captions"]]
        else:
            tokens = [[normalize_token(t) for t in s]
                      for s in (r.get("processed_tokens") or [tokenize(c) for c in r["captions"]])]
        rows.append((r["split"], os.path.join(image_root, r["file_path"]), (str(json_path), f"[{k}]"),
                     r["captions"], tokens, r["id"]))
    if text == "authors":
        vocab = shared_vocab(vocab_path, lambda: authors_vocab([c for row in rows if row[0] == "train"
                                                                for c in row[3]], word2vec_path))
        rows = [(*row[:4], [[w for w in t if w in vocab] for t in row[4]], row[5]) for row in rows]
    else:
        vocab = shared_vocab(vocab_path, lambda: Vocab.build(
            [t for row in rows if row[0] == "train" for t in row[4]], min_count=min_count))
    chosen = [row for row in rows if row[0] == split]
    if not chosen:
        raise DataError(json_path, None, f"no records of split {split!r}")
    ids = sorted({row[5] for row in chosen})
    index = {v: i for i, v in enumerate(ids)}
    return PedesDataset([index[row[5]] for row in chosen], [row[1] for row in chosen], [row[2] for row in chosen],
                        [row[3] for row in chosen], [row[4] for row in chosen], vocab, view, transform)


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
    run_command(main, "python -m fusedembed_dualpath.datasets")
