"""The recipes' datasets: ML-Images lists (multi-label, soft confidences), single-label image
lists (``<image> <class>``, the fine-tuning data of finetune.py) and the embedded scenes as a
multi-label set with a single-label task beside it (the demo).

Images of the lists are decoded with ``torchvision.io.decode_image`` (RGB) from ``image_root``;
a file that cannot be decoded raises an error naming it and the list line, or, with
``skip_bad``, is skipped (``fusedembed.data.SkipsUnreadable``). The transforms are the named
presets of :mod:`.transforms`: ``train_transform`` for the train split, ``eval_transform`` for
the others. Every dataset has ``label_counts()``: (C,) positives per class (what the
evaluator's frequency terciles are made of).
"""

import os
import warnings
from typing import Literal, Optional

import torch
from torch.utils.data import Dataset

from fusedembed.data import (
    DataError,
    ImageReadError,
    SkipLog,
    SkipsUnreadable,
    Vocab,
    check_image,
    scenes,
    text_lines,
)

from .labels import read_class_dictionary, read_label_list, with_ancestors
from .transforms import make_transform

TrainPreset = Literal["code", "paper", "finetune", "flip"]
EvalPreset = Literal["central_crop", "resize"]

_READ_ERRORS = (RuntimeError, OSError, ValueError)
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")     # the scenes' colour classes
NUM_COLOUR_COUNTS = 4                # a scene has 1 to 4 objects, so 1 to 4 distinct colours


def read_image(path, listed_in=None, where=None) -> torch.Tensor:
    """uint8 (3, H, W) RGB through torchvision's decoders; ``ImageReadError`` naming the file
    and the list entry that referenced it when it cannot be read."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        with warnings.catch_warnings():
            # torchvision 0.29 announces the move of its decoders to TorchCodec on every call.
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except _READ_ERRORS as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ImageReadError(listed_in or path, where, f"cannot read image {path}: {reason}", path) from err


def _usable(path, log: SkipLog, listed_in, where, verify: bool) -> bool:
    """The file exists and (with ``verify``) decodes with the decoder used at access."""
    if not check_image(path, log, listed_in, where, verify=False):
        return False
    if verify:
        try:
            read_image(path, listed_in, where)
        except ImageReadError as err:
            log.bad("unreadable_image", listed_in, where, err.reason)
            return False
    return True


class ImageList(SkipsUnreadable, Dataset):
    """Images of a list file with their targets, kept flat (one tensor for all, not one per
    image: the ML-Images train list has 17.6M lines). Multi-label: ``targets`` is
    ``(offsets (N+1,), classes, confidences)``; single-label: a (N,) int64 tensor."""

    def __init__(self, paths, targets, lines, list_file, num_classes, transform, log, multilabel: bool,
                 classes=None):
        self.paths, self.targets, self._lines, self._list_file = paths, targets, lines, list_file
        self.num_classes, self.transform, self.multilabel, self.classes = num_classes, transform, multilabel, classes
        self._init_skips(log)

    def __len__(self):
        return len(self.paths)

    def labels(self, i: int) -> torch.Tensor:
        offsets, idx, conf = self.targets
        a, b = int(offsets[i]), int(offsets[i + 1])
        y = torch.zeros(self.num_classes, dtype=torch.float32)
        y[idx[a:b].long()] = conf[a:b]
        return y

    def label_counts(self, threshold: float = 0.5) -> torch.Tensor:
        """(C,) images per class (a multi-label entry counts at confidence >= ``threshold``)."""
        if self.multilabel:
            _, idx, conf = self.targets
            return torch.bincount(idx[conf >= threshold].long(), minlength=self.num_classes)
        return torch.bincount(self.targets, minlength=self.num_classes)

    def __getitem__(self, i: int) -> dict:
        return self._read_item(i, self._item)

    def _item(self, i: int) -> dict:
        image = read_image(self.paths[i], self._list_file, f"line {int(self._lines[i])}")
        if self.transform is not None:
            image = self.transform(image)
        target = {"labels": self.labels(i)} if self.multilabel else {"label": int(self.targets[i])}
        return {"image": image, **target, "instance": i, "path": self.paths[i]}


def _finish(list_file, log, paths, lines, **kwargs) -> ImageList:
    if not paths:
        raise DataError(list_file, None, "no usable images" + (f"; {log.summary()}" if log.total else ""))
    log.warn_if_any(str(list_file))
    return ImageList(paths, lines=torch.tensor(lines, dtype=torch.int64), list_file=list_file, log=log, **kwargs)


def mlimages(split: str, list_file: str, image_root: str, dictionary: Optional[str] = None,
             num_classes: Optional[int] = None, add_ancestors: bool = False, train_transform: TrainPreset = "code",
             eval_transform: EvalPreset = "central_crop", image_size: int = 224, skip_bad: bool = False,
             verify_images: bool = False) -> ImageList:
    """An ML-Images list (``list_file`` may hold ``{split}``: ``data/{split}_im_list.txt``).

    Args:
      dictionary: the class dictionary; gives the class count and the hierarchy.
      num_classes: without a dictionary (then required).
      add_ancestors: also mark every ancestor of a labelled class, with the highest confidence
        among its labelled descendants (the released lists already include them).
      skip_bad: skip malformed lines and missing/unreadable images, counted in
        ``dataset.skipped``, instead of raising.
      verify_images: decode every image at construction.
    """
    list_file = str(list_file).format(split=split)
    classes = read_class_dictionary(dictionary) if dictionary is not None else None
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"mlimages: num_classes={num_classes} but {dictionary} has {len(classes)} classes")
        num_classes = len(classes)
    if num_classes is None:
        raise ValueError("mlimages: give dictionary= or num_classes=")
    if add_ancestors and classes is None:
        raise ValueError("mlimages: add_ancestors needs the class dictionary")
    log = SkipLog(skip_bad)
    paths, lines, offsets, flat_idx, flat_conf = [], [], [0], [], []
    for image, labels, n in read_label_list(list_file, num_classes, log):
        path = os.path.join(image_root, image)
        if not _usable(path, log, list_file, f"line {n}", verify_images):
            continue
        if add_ancestors:
            labels = with_ancestors(labels, classes)
        idx = sorted(labels)
        paths.append(path)
        lines.append(n)
        flat_idx.extend(idx)
        flat_conf.extend(labels[c] for c in idx)
        offsets.append(len(flat_idx))
    targets = (torch.tensor(offsets, dtype=torch.int64), torch.tensor(flat_idx, dtype=torch.int32),
               torch.tensor(flat_conf, dtype=torch.float32))
    return _finish(list_file, log, paths, lines, targets=targets, num_classes=num_classes,
                   transform=make_transform(split, train_transform, eval_transform, image_size), multilabel=True,
                   classes=classes)


def labelled_list(split: str, list_file: str, image_root: str, num_classes: int,
                  train_transform: TrainPreset = "finetune", eval_transform: EvalPreset = "central_crop",
                  image_size: int = 224, skip_bad: bool = False, verify_images: bool = False) -> ImageList:
    """A single-label list, ``<image> <class index>`` per line (finetune.py's tfrecords are made
    from such lists); ``list_file`` may hold ``{split}``."""
    list_file = str(list_file).format(split=split)
    if not os.path.isfile(list_file):
        raise DataError(list_file, None, "file not found")
    log = SkipLog(skip_bad)
    paths, targets, lines = [], [], []
    for n, line in text_lines(list_file):
        fields = line.split()
        if not fields:
            continue
        where = f"line {n}"
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= num_classes:
            log.bad("malformed_line", list_file, where, f"expected <image> <class in [0, {num_classes})>, "
                                                        f"got {line.strip()!r}")
            continue
        path = os.path.join(image_root, fields[0])
        if not _usable(path, log, list_file, where, verify_images):
            continue
        paths.append(path)
        targets.append(int(fields[1]))
        lines.append(n)
    return _finish(list_file, log, paths, lines, targets=torch.tensor(targets, dtype=torch.int64),
                   num_classes=num_classes, transform=make_transform(split, train_transform, eval_transform,
                                                                    image_size), multilabel=False)


class ScenesMultiLabel(Dataset):
    """The embedded scenes as ML-Images sees them: ``labels`` the 57 classes with their
    ancestors (the core's scenes labels), ``label`` a single-label task for the transfer —
    the number of distinct colours in the scene minus one (4 classes), a property no
    multi-label class names but the colour classes determine."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform
        self.classes = list(base.classes)
        self.num_classes = len(self.classes)
        colours = [i for i, name in enumerate(self.classes) if name in COLOURS]
        if len(colours) != len(COLOURS):
            raise ValueError(f"scenes_multilabel: the scenes classes lack colour classes {COLOURS}")
        self.single_labels = (base.labels[:, colours].sum(1) - 1).long()

    def __len__(self):
        return len(self.base.labels)

    def label_counts(self, threshold: float = 0.5) -> torch.Tensor:
        return self.base.labels.sum(0).long()

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(self.base.load_image(i)), "labels": self.base.labels[i].float(),
                "label": int(self.single_labels[i]), "instance": i}


def scenes_multilabel(split: str, num_images: Optional[int] = None, image_size: int = 64, seed: int = 0,
                      root: Optional[str] = None, scenes_split: Optional[Literal["train", "val", "test"]] = None,
                      train_transform: TrainPreset = "flip", eval_transform: EvalPreset = "resize",
                      progress: bool = True, workers: Optional[int] = None) -> ScenesMultiLabel:
    """The core's ``scenes`` images (generated once, cached) as a multi-label image set.

    ``scenes_split``: which scenes split the images come from (default: ``split``), so that a
    fine-tuning run trains on images the multi-label run never saw. Images are scaled to
    [-1, 1] by the presets (``flip``/``resize``: the scenes labels are colours, shapes and
    counts, which hue shifts, rotations and crops would change).
    """
    base = scenes(scenes_split or split, root=root, num_images=num_images, image_size=image_size, seed=seed,
                  view="image", vocab=_NO_WORDS, progress=progress, workers=workers)
    return ScenesMultiLabel(base, make_transform(split, train_transform, eval_transform, image_size))


_NO_WORDS = Vocab([])          # captions are not read here: no vocabulary to build
