"""Captioned image files on disk: the Karpathy split JSON (Flickr30k, MSCOCO) and a folder
with a ``captions.jsonl``. Both give :class:`ImageCaptionDataset` (views and item keys of
:class:`~fusedembed.data.captions.CaptionDataset`, plus ``path``).

Checks at construction: JSON/JSONL syntax and fields (error ``<file>:<location>: …``) and
that every image file exists; with ``verify_images=True`` also that each image decodes.
With ``skip_bad=True`` bad records/images are skipped instead and counted in
``dataset.skipped`` (reason → count; ``dataset.skip_messages`` keeps the first 100).
An image that is unreadable at access (not verified, or changed since) raises there, naming
the image and its record; with ``skip_bad=True`` the next readable item is served instead
and the image counted in ``dataset.skipped`` (see :class:`~.image_io.SkipsUnreadable`).
"""

import json
import os
from typing import Callable

import torch

from .captions import CaptionDataset
from .errors import DataError, SkipLog, read_json, text_lines
from .image_io import SkipsUnreadable, check_image, load_image
from .vocab import Vocab, normalize_token, tokenize

TRAIN_SPLITS = ("train", "restval")     # Karpathy: COCO's "restval" joins training


class ImageCaptionDataset(SkipsUnreadable, CaptionDataset):
    def __init__(self, paths, sources, captions, tokens, vocab, view="pair", transform=None,
                 seed=0, log: SkipLog | None = None):
        sources = list(sources)
        super().__init__(captions, tokens, vocab, view, transform, seed,
                         name=sources[0][0] if sources else None)
        self.paths = list(paths)
        self.sources = sources              # (list file, location) of each image's record
        self._init_skips(log)

    def __getitem__(self, idx: int) -> dict:
        return self._read_item(idx, super().__getitem__)

    def load_image(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], *self.sources[i])

    def extra(self, i, c, with_image):
        return {"path": self.paths[i]} if with_image else {}


def _splits(split) -> set[str]:
    if isinstance(split, str):
        return set(split.split("+"))
    return set(split)


def _vocab_from(records, is_train, min_count, path) -> Vocab:
    """records: (image path, (file, where), [raw captions], [token lists], split)."""
    pool = [t for r in records if is_train(r[4]) for t in r[3]]
    if not pool:
        raise DataError(path, None, "no training captions to build the vocabulary from; "
                        "pass vocab=")
    return Vocab.build(pool, min_count=min_count)


def _dataset(records, vocab, view, transform, seed, log, path, split):
    if not records:
        raise DataError(path, None, "no usable images" + (f" in split {split!r}" if split else "")
                        + (f"; {log.summary()}" if log.total else ""))
    log.warn_if_any(str(path))
    return ImageCaptionDataset([r[0] for r in records], [r[1] for r in records],
                               [r[2] for r in records], [r[3] for r in records], vocab, view,
                               transform, seed, log)


def karpathy(json_path, image_root, split="train", view: str = "pair",
             vocab: Vocab | None = None, min_count: int = 1,
             captions_per_image: int | None = None, transform: Callable | None = None,
             skip_bad: bool = False, verify_images: bool = False,
             seed: int = 0) -> ImageCaptionDataset:
    """Flickr30k / MSCOCO from Karpathy's ``dataset_*.json``.

    Layout: ``{"images": [{"filename", "filepath" (COCO: "train2014"/"val2014"), "split":
    "train"|"val"|"test"|"restval", "sentences": [{"tokens": [...], "raw": "..."}]}]}``;
    an image's file is ``image_root/[filepath/]filename``.

    Args:
      split: one split, several joined by "+" ("train+restval": the 113,287 COCO training
        images) or a sequence of names.
      vocab: default built from the "train" and "restval" captions of the file (words seen
        ``min_count`` times).
      captions_per_image: keep the first k captions (COCO evaluation uses 5); an image with
        fewer is an error (or skipped).
    """
    log = SkipLog(skip_bad)
    doc = read_json(json_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(json_path, None, "expected an object with an 'images' list "
                        "(Karpathy split layout)")
    wanted = _splits(split)
    records = []
    for k, entry in enumerate(doc["images"]):
        where = f"images[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) \
                or not isinstance(entry.get("split"), str) \
                or not isinstance(entry.get("sentences"), list):
            log.bad("malformed_record", json_path, where,
                    "needs 'filename' (str), 'split' (str) and 'sentences' (list)")
            continue
        caps, toks, ok = [], [], True
        for s, sent in enumerate(entry["sentences"]):
            tokens = sent.get("tokens") if isinstance(sent, dict) else None
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if tokens is None and isinstance(raw, str):
                tokens = tokenize(raw)
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                log.bad("malformed_record", json_path, f"{where}.sentences[{s}]",
                        "needs 'tokens' (list of str) or 'raw' (str)")
                ok = False
                break
            toks.append([normalize_token(t) for t in tokens])
            caps.append(raw if isinstance(raw, str) else " ".join(tokens))
        if not ok:
            continue
        if captions_per_image is not None:
            if len(caps) < captions_per_image:
                if entry["split"] in wanted:
                    log.bad("too_few_captions", json_path, where,
                            f"{len(caps)} captions, {captions_per_image} required")
                continue
            caps, toks = caps[:captions_per_image], toks[:captions_per_image]
        elif not caps and entry["split"] in wanted:
            log.bad("too_few_captions", json_path, where, "no sentences")
            continue
        path = os.path.join(image_root, entry.get("filepath") or "", entry["filename"])
        records.append((path, (str(json_path), where), caps, toks, entry["split"]))
    if vocab is None:
        vocab = _vocab_from(records, lambda s: s in TRAIN_SPLITS, min_count, json_path)
    chosen = [r for r in records if r[4] in wanted
              and check_image(r[0], log, r[1][0], r[1][1], verify_images)]
    return _dataset(chosen, vocab, view, transform, seed, log, json_path, split)


def caption_folder(root, captions_file: str = "captions.jsonl", split: str | None = None,
                   view: str = "pair", vocab: Vocab | None = None, min_count: int = 1,
                   transform: Callable | None = None, skip_bad: bool = False,
                   verify_images: bool = False, seed: int = 0) -> ImageCaptionDataset:
    """A folder of images with ``captions.jsonl``: one JSON object per line,
    ``{"image": "<path relative to root>", "caption": "..."}`` or ``"captions": [...]``,
    optionally ``"split": "train"|"val"|...``. Several lines may name the same image: their
    captions are joined in file order. Captions are tokenized with
    :func:`~fusedembed.data.vocab.tokenize`.

    ``split`` keeps the records of that split (records then need a "split"); the default
    vocabulary comes from the "train" records (all records when none has a split).
    """
    log = SkipLog(skip_bad)
    list_file = os.path.join(root, captions_file)
    if not os.path.isfile(list_file):
        raise DataError(list_file, None, "file not found")
    by_image: dict[str, list] = {}
    for n, line in text_lines(list_file):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            log.bad("malformed_line", list_file, where, f"invalid JSON: {err.msg}")
            continue
        caps = rec.get("captions", [rec["caption"]] if "caption" in rec else None) \
            if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) \
                or not isinstance(caps, list) or not caps \
                or not all(isinstance(c, str) and c.strip() for c in caps):
            log.bad("malformed_line", list_file, where,
                    "needs 'image' (str) and 'caption' (str) or 'captions' (non-empty "
                    "list of str)")
            continue
        rec_split = rec.get("split")
        if split is not None and not isinstance(rec_split, str):
            log.bad("malformed_line", list_file, where,
                    f"no 'split' field but split={split!r} was requested")
            continue
        entry = by_image.setdefault(rec["image"], [os.path.join(root, rec["image"]),
                                                   (list_file, where), [], [], rec_split])
        if entry[4] != rec_split:
            log.bad("malformed_line", list_file, where,
                    f"image {rec['image']} listed with splits {entry[4]!r} and "
                    f"{rec_split!r}")
            continue
        entry[2].extend(caps)
        entry[3].extend(tokenize(c) for c in caps)
    records = [tuple(r) for r in by_image.values()]
    if vocab is None:
        has_split = any(r[4] is not None for r in records)
        vocab = _vocab_from(records, lambda s: not has_split or s == "train", min_count,
                            list_file)
    chosen = [r for r in records if (split is None or r[4] == split)
              and check_image(r[0], log, r[1][0], r[1][1], verify_images)]
    return _dataset(chosen, vocab, view, transform, seed, log, list_file, split)
