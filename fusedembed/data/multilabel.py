"""Multi-label image lists in the Tencent ML-Images format.

List file, one image per line, fields separated by tabs or spaces::

    <image path> [<source url>] <class>[:<confidence>] <class>[:<confidence>] ...

(the released ``train_im_*.txt`` carry the download URL as a second field; it is ignored).
Confidence defaults to 1; the released lists use 0.8/0.9/1 — kept as soft targets.

Class dictionary (``dictionary_and_semantic_hierarchy.txt``), one class per line in index
order, tab-separated: ``<id>\\t<parent index>\\t<name>`` (the released file) or
``<index>\\t<id>\\t<parent index>\\t<name>``; an optional header line; parent −1 = root.

Items: ``image`` (float CHW in [0, 1], after ``transform``), ``labels`` (C,) float32 soft
targets, ``instance`` (image index), ``path``.
"""

import os
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from .errors import DataError, SkipLog, text_lines
from .image_io import SkipsUnreadable, check_image, load_image

_LABEL = re.compile(r"^(\d+)(?::([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?))?$")


@dataclass
class ClassDictionary:
    ids: list[str]
    names: list[str]
    parents: list[int]

    def __len__(self):
        return len(self.names)

    def ancestors(self, c: int) -> list[int]:
        out = []
        while self.parents[c] >= 0:
            c = self.parents[c]
            out.append(c)
        return out


def _int(text):
    try:
        return int(text)
    except ValueError:
        return None


def read_class_dictionary(path) -> ClassDictionary:
    """Reads and checks a class dictionary (parents in range, no cycles)."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    ids, names, parents, lines = [], [], [], []
    for n, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3:
            cid, parent, name = cols
        elif len(cols) == 4:
            index, cid, parent, name = cols
            if _int(index) is None and not ids:
                continue                              # header line
            if _int(index) != len(ids):
                raise DataError(path, f"line {n}", f"class index {index!r}, expected "
                                f"{len(ids)} (classes must be listed in index order)")
        else:
            raise DataError(path, f"line {n}", f"{len(cols)} tab-separated columns; "
                            "expected <id> <parent> <name> (optionally <index> first)")
        if _int(parent) is None:
            if not ids:
                continue                              # header line
            raise DataError(path, f"line {n}", f"parent index {parent!r} is not an integer")
        ids.append(cid)
        names.append(name)
        parents.append(int(parent))
        lines.append(n)
    if not names:
        raise DataError(path, None, "no classes")
    for c, (p, n) in enumerate(zip(parents, lines)):
        if not -1 <= p < len(names) or p == c:
            raise DataError(path, f"line {n}", f"parent {p} of class {c} is out of range "
                            f"[-1, {len(names)}) or itself")
    for c in range(len(names)):                          # cycles: a path longer than C
        p, steps = parents[c], 0
        while p >= 0:
            p, steps = parents[p], steps + 1
            if steps > len(names):
                raise DataError(path, f"line {lines[c]}", f"class {c} is on a parent cycle")
    return ClassDictionary(ids, names, parents)


class MultiLabelImages(SkipsUnreadable, Dataset):
    def __init__(self, paths, targets, num_classes, sources, transform, log, classes):
        self.paths, self._targets, self._sources = paths, targets, sources
        self.num_classes, self.transform, self.classes = num_classes, transform, classes
        self._init_skips(log)

    def __len__(self):
        return len(self.paths)

    def labels(self, i: int) -> torch.Tensor:
        idx, conf = self._targets[i]
        y = torch.zeros(self.num_classes, dtype=torch.float32)
        y[idx] = conf
        return y

    def __getitem__(self, i: int) -> dict:
        return self._read_item(i, self._item)

    def _item(self, i: int) -> dict:
        image = load_image(self.paths[i], *self._sources[i])
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "labels": self.labels(i), "instance": i, "path": self.paths[i]}


def mlimages(list_file, image_root, dictionary=None, num_classes: int | None = None,
             add_ancestors: bool = False, transform: Callable | None = None,
             skip_bad: bool = False, verify_images: bool = False) -> MultiLabelImages:
    """A Tencent ML-Images list (see the module docstring).

    Args:
      dictionary: path of the class dictionary; gives the class count and the hierarchy.
      num_classes: without a dictionary (then required).
      add_ancestors: also mark every ancestor of a labelled class, with the highest
        confidence among its labelled descendants (the released lists already include them).
      skip_bad: skip malformed lines and missing/unreadable images, counted in
        ``dataset.skipped``, instead of raising (an image unreadable at access: the next
        readable item is served, see :class:`~.image_io.SkipsUnreadable`).
      verify_images: decode every image at construction (see :mod:`.image_io`).
    """
    classes = read_class_dictionary(dictionary) if dictionary is not None else None
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"num_classes={num_classes} but {dictionary} has {len(classes)}")
        num_classes = len(classes)
    if num_classes is None:
        raise ValueError("mlimages: give dictionary= or num_classes=")
    if add_ancestors and classes is None:
        raise ValueError("mlimages: add_ancestors needs the class dictionary")
    if not os.path.isfile(list_file):
        raise DataError(list_file, None, "file not found")
    log = SkipLog(skip_bad)
    paths, targets, sources = [], [], []
    for n, line in text_lines(list_file):
        fields = line.split()
        if not fields:
            continue
        where = f"line {n}"
        labels = fields[1:]
        if labels and "://" in labels[0]:
            labels = labels[1:]
        found, bad = {}, None
        for field in labels:
            m = _LABEL.match(field)
            if m is None:
                bad = f"bad label field {field!r}: expected <class>[:<confidence>]"
                break
            c, conf = int(m.group(1)), float(m.group(2) or 1.0)
            if c >= num_classes:
                bad = f"class {c} out of range [0, {num_classes})"
            elif conf > 1.0:
                bad = f"confidence {conf} of class {c} outside [0, 1]"
            elif c in found:
                bad = f"class {c} listed twice"
            if bad:
                break
            found[c] = conf
        if bad:
            log.bad("malformed_line", list_file, where, bad)
            continue
        path = os.path.join(image_root, fields[0])
        if not check_image(path, log, list_file, where, verify_images):
            continue
        if add_ancestors:
            for c, conf in list(found.items()):
                for a in classes.ancestors(c):
                    found[a] = max(found.get(a, 0.0), conf)
        idx = sorted(found)
        paths.append(path)
        targets.append((torch.tensor(idx, dtype=torch.long),
                        torch.tensor([found[c] for c in idx], dtype=torch.float32)))
        sources.append((str(list_file), where))
    if not paths:
        raise DataError(list_file, None, "no usable images"
                        + (f"; {log.summary()}" if log.total else ""))
    log.warn_if_any(str(list_file))
    return MultiLabelImages(paths, targets, num_classes, sources, transform, log, classes)
