"""ML-Images labels: the class dictionary with its hierarchy, the list format, and the label
augmentation the database was built with (ancestors, then strong co-occurrence).

Class dictionary (``data/dictionary_and_semantic_hierarchy.txt``, 11,166 classes), one class
per line in index order, tab-separated: ``<index>\\t<id>\\t<parent index>\\t<name>`` with a header
line (the released file), or ``<id>\\t<parent index>\\t<name>``; parent −1 = a root.

List file, one image per line, fields separated by tabs or spaces::

    <image> [<source url>] <class>[:<confidence>] <class>[:<confidence>] ...

(a URL second field, as in the ImageNet id lists, is skipped). A bare class means confidence
1; the released lists carry 0.8 / 0.9 / 1 and those soft values are kept.

Augmentation (paper, Sec. 2.2): (a) every ancestor of a labelled class is added; (b) over a
set of images that carry both label sets, CO(i, j) = n_ij / n_i (n_i images with i, n_ij with
i and j); a pair with CO(i, j) > 0.5 whose classes are not on one hierarchy path (neither is
an ancestor of the other) is strongly co-occurring, and then an image labelled i also gets j.

Command (writes an augmented list)::

    python -m fusedembed_mlimages.labels LIST --dictionary DICT --out OUT
        [--cooccurrence SOURCE_LIST] [--threshold 0.5] [--from-classes SPEC] [--to-classes SPEC]
"""

import argparse
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from fusedembed.data import DataError, SkipLog, read_text, text_lines
from fusedembed.errors import run_command

_LABEL = re.compile(r"^(\d+)(?::([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?))?$")

Labels = Dict[int, float]          # class index -> confidence


@dataclass
class ClassDictionary:
    ids: List[str]
    names: List[str]
    parents: List[int]

    def __len__(self):
        return len(self.names)

    def ancestors(self, c: int) -> List[int]:
        """Parent, grandparent, ... up to the root."""
        out = []
        while self.parents[c] >= 0:
            c = self.parents[c]
            out.append(c)
        return out

    def on_one_path(self, i: int, j: int) -> bool:
        """True when i == j or one is an ancestor of the other."""
        return i == j or j in self.ancestors(i) or i in self.ancestors(j)


def _int(text):
    try:
        return int(text)
    except ValueError:
        return None


def read_class_dictionary(path) -> ClassDictionary:
    """Reads and checks a class dictionary (columns, index order, parents in range, no cycles)."""
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


def parse_labels(fields: Sequence[str], num_classes: int) -> Tuple[Optional[Labels], Optional[str]]:
    """(labels, None) from the label fields of one list line, or (None, reason)."""
    found: Labels = {}
    for field in fields:
        m = _LABEL.match(field)
        if m is None:
            return None, f"bad label field {field!r}: expected <class>[:<confidence>]"
        c, conf = int(m.group(1)), float(m.group(2) or 1.0)
        if c >= num_classes:
            return None, f"class {c} out of range [0, {num_classes})"
        if conf > 1.0:
            return None, f"confidence {conf} of class {c} outside [0, 1]"
        if c in found:
            return None, f"class {c} listed twice"
        found[c] = conf
    return found, None


def read_label_list(path, num_classes: int, log: SkipLog) -> Iterator[Tuple[str, Labels, int]]:
    """(image field, labels, line number) of each line of a list file; malformed lines raise
    or, when ``log`` skips, are counted there."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    for n, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        labels = fields[1:]
        if labels and "://" in labels[0]:
            labels = labels[1:]
        found, bad = parse_labels(labels, num_classes)
        if bad:
            log.bad("malformed_line", path, f"line {n}", bad)
            continue
        yield fields[0], found, n


def with_ancestors(labels: Labels, classes: ClassDictionary) -> Labels:
    """Adds every ancestor of a labelled class, with the highest confidence among its labelled
    descendants."""
    out = dict(labels)
    for c, conf in labels.items():
        for a in classes.ancestors(c):
            out[a] = max(out.get(a, 0.0), conf)
    return out


def cooccurrence(label_sets: Iterable[Labels], classes: ClassDictionary, *, threshold: float = 0.5,
                 min_confidence: float = 0.5, sources: Optional[set] = None, targets: Optional[set] = None,
                 chunk: int = 100_000) -> Dict[int, Dict[int, float]]:
    """Strongly co-occurring pairs: ``{i: {j: CO(i, j)}}`` with CO(i, j) = n_ij / n_i >
    ``threshold`` over ``label_sets`` (a label counts when its confidence is at least
    ``min_confidence``), i in ``sources`` and j in ``targets`` (all classes when None), and i, j
    not on one hierarchy path. Pair counts are accumulated per ``chunk`` images with numpy."""
    if not 0 <= threshold < 1:
        raise ValueError(f"cooccurrence: threshold must be in [0, 1), got {threshold}")
    C = len(classes)
    n_i: Counter = Counter()
    n_ij: Counter = Counter()
    keys: List[np.ndarray] = []

    def flush():
        if keys:
            pairs, counts = np.unique(np.concatenate(keys), return_counts=True)
            n_ij.update(dict(zip(pairs.tolist(), counts.tolist())))
            keys.clear()

    for k, labels in enumerate(label_sets, 1):
        present = [c for c, conf in labels.items() if conf >= min_confidence]
        src = np.array([c for c in present if sources is None or c in sources], dtype=np.int64)
        dst = np.array([c for c in present if targets is None or c in targets], dtype=np.int64)
        n_i.update(src.tolist())
        if len(src) and len(dst):
            pair = (src[:, None] * C + dst[None, :]).ravel()
            keys.append(pair[(pair // C) != (pair % C)])
        if k % chunk == 0:
            flush()
    flush()
    strong: Dict[int, Dict[int, float]] = {}
    for key, count in n_ij.items():
        i, j = divmod(key, C)
        co = count / n_i[i]
        if co > threshold and not classes.on_one_path(i, j):
            strong.setdefault(i, {})[j] = co
    return strong


def with_cooccurring(labels: Labels, strong: Dict[int, Dict[int, float]]) -> Labels:
    """Adds j to an image labelled i for every strong pair (i, j), with i's confidence (the
    highest, when several i give the same j)."""
    out = dict(labels)
    for i, conf in labels.items():
        for j in strong.get(i, ()):
            out[j] = max(out.get(j, 0.0), conf)
    return out


def format_line(image: str, labels: Labels) -> str:
    return "\t".join([image] + [f"{c}:{labels[c]:g}" for c in sorted(labels)])


def parse_class_spec(spec: str, num_classes: int) -> set:
    """``"0-10031,10040"`` (ranges inclusive) or ``@FILE`` (indices, one per line) -> a set."""
    text = read_text(spec[1:]) if spec.startswith("@") else spec
    out = set()
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"class spec: {part!r} is not an index or a range a-b") from None
        if not 0 <= a <= b < num_classes:
            raise ValueError(f"class spec: {part!r} is outside [0, {num_classes})")
        out.update(range(a, b + 1))
    return out


def augment_list(list_file, classes: ClassDictionary, out, *, cooccurrence_list=None, threshold: float = 0.5,
                 min_confidence: float = 0.5, sources: Optional[set] = None, targets: Optional[set] = None,
                 skip_bad: bool = False) -> dict:
    """Writes ``out``: each image of ``list_file`` with the ancestors of its labels and, when a
    ``cooccurrence_list`` is given, the strongly co-occurring classes of its own labels (their
    ancestors are not added: the paper's order). Returns counts for a summary."""
    C = len(classes)
    strong = {}
    if cooccurrence_list is not None:
        log = SkipLog(skip_bad)
        strong = cooccurrence((labels for _, labels, _ in read_label_list(cooccurrence_list, C, log)), classes,
                              threshold=threshold, min_confidence=min_confidence, sources=sources, targets=targets)
        log.warn_if_any(str(cooccurrence_list))
    log = SkipLog(skip_bad)
    images = before = after = 0
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for image, labels, _ in read_label_list(list_file, C, log):
                new = with_cooccurring(labels, strong)
                new.update({a: max(new.get(a, 0.0), c) for a, c in with_ancestors(labels, classes).items()})
                f.write(format_line(image, new) + "\n")
                images, before, after = images + 1, before + len(labels), after + len(new)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.warn_if_any(str(list_file))
    return {"images": images, "labels_before": before, "labels_after": after,
            "strong_pairs": sum(len(v) for v in strong.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedembed_mlimages.labels",
                                description="Write an ML-Images list with its labels augmented: ancestors from the "
                                            "hierarchy, then strongly co-occurring classes.")
    p.add_argument("list", help="the list to augment (<image> <class>[:<conf>] ...)")
    p.add_argument("--dictionary", required=True, help="dictionary_and_semantic_hierarchy.txt")
    p.add_argument("--out", required=True, help="the augmented list to write")
    p.add_argument("--cooccurrence", metavar="SOURCE_LIST",
                   help="a list whose images carry both label sets; CO(i, j) = n_ij / n_i is counted on it")
    p.add_argument("--threshold", type=float, default=0.5, help="strong pair: CO(i, j) > this (0.5)")
    p.add_argument("--min-confidence", type=float, default=0.5,
                   help="a label counts for CO when its confidence is at least this")
    p.add_argument("--from-classes", help="the classes i may come from: '0-10031,...' or @FILE (default: all)")
    p.add_argument("--to-classes", help="the classes j may come from (default: all)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (counted) instead of failing")
    args = p.parse_args(argv)
    # CO(i, j) = n_ij / n_i lies in [0, 1]: a threshold of 1 or more would add nothing, silently.
    if not 0 <= args.threshold < 1:
        p.error(f"--threshold: expected a value in [0, 1), got {args.threshold} (CO(i, j) never exceeds 1)")
    if not 0 <= args.min_confidence <= 1:
        p.error(f"--min-confidence: expected a value in [0, 1], got {args.min_confidence}")
    try:
        classes = read_class_dictionary(args.dictionary)
        spec = {k: parse_class_spec(v, len(classes)) if v else None
                for k, v in (("sources", args.from_classes), ("targets", args.to_classes))}
        stats = augment_list(args.list, classes, args.out, cooccurrence_list=args.cooccurrence,
                             threshold=args.threshold, min_confidence=args.min_confidence, skip_bad=args.skip_bad,
                             **spec)
    except (DataError, ValueError, OSError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {stats['images']} images, labels {stats['labels_before']} -> {stats['labels_after']}, "
          f"{stats['strong_pairs']} strongly co-occurring pairs")
    return 0


if __name__ == "__main__":
    run_command(main, "python -m fusedembed_mlimages.labels")
