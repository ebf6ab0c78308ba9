"""Instance-retrieval benchmarks, read from the user's folders and scored by the core metrics
(``fusedembed.metrics``). Written from the protocols, not from the release's loaders (which
drop Holidays' last group, group an unsorted UKBench glob and leave Copydays undefined).

- INRIA Holidays: ``<root>/jpg/*.jpg`` (or ``<root>/*.jpg``), 1,491 images ``GGGGNN.jpg``;
  group GGGG, its query the ``NN = 00`` image (500 queries); ``rotations``: a YAML/JSON map
  ``{"100600.jpg": 90, ...}`` (the release's holidays-rotate.yaml format, degrees clockwise
  to make the image upright) for the rotated version. mAP with the Holidays trapezoid AP,
  each query excluded from its own ranking, every group (the last one too).
- UKBench: ``ukbenchNNNNN.jpg``, 10,200 images, **sorted** by name, groups of 4; N-S score =
  hits among the top 4, the query itself included (4 is perfect).
- Copydays "strong": originals ``<root>/*.jpg`` (``GGGG00.jpg``), queries
  ``<root>/strong/*.jpg`` (group = name // 100 * 100), a distractor folder (any images); the
  gallery is originals + distractors, each query's relevant item its original; mAP.
- Revisited Oxford / Paris: ``<root>/jpg/<name>.jpg`` and ``<root>/gnd_<dataset>.pkl``
  (``imlist``, ``qimlist``, ``gnd`` with ``bbx``, ``easy``, ``hard``, ``junk``); Easy
  (positives easy; junk junk + hard), Medium (easy + hard; junk), Hard (hard; junk + easy)
  mAP. ``crop_query`` (the protocol's default) crops each query to its ``bbx``.

Embedding at test time: images keep their aspect ratio (``rect``: largest side = size) and
are batched by exact size (buckets), so nothing is resized to a square or padded.
"""

import json
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from fusedembed.data import DataError, load_image, read_text
from fusedembed.index import build_index
from fusedembed.metrics import holidays_map, instance_map, listed_map, ukbench_score

from .transforms import crop_box, eval_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_image(path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; an unreadable file (truncated, not an image) raises the
    core's ImageReadError naming it."""
    return load_image(path)


def list_images(folder) -> List[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(folder, None, "expected a folder of images, it is not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@torch.no_grad()
def embed_images(model, images, transform: Callable, device, batch_size: int = 32,
                 output: str = "embedding") -> torch.Tensor:
    """Embeddings of ``images`` (tensors or paths) in order; same-size inputs share a batch."""
    model.eval()
    tensors = [transform(read_image(im) if not isinstance(im, torch.Tensor) else im) for im in images]
    buckets: Dict[tuple, List[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[tuple(t.shape)].append(i)
    out: List[Optional[torch.Tensor]] = [None] * len(tensors)
    for idx in buckets.values():
        for a in range(0, len(idx), batch_size):
            part = idx[a:a + batch_size]
            emb = model({"image": torch.stack([tensors[i] for i in part]).to(device)})[output].float().cpu()
            for i, e in zip(part, emb):
                out[i] = e
    return torch.stack(out)


def knn(queries: torch.Tensor, gallery: torch.Tensor, k: int, index: str = "exact"):
    """(scores, ids) of the top-k gallery items per query: ``index`` "exact" (blocked matmul +
    top-k) or "flat" (FAISS, when installed; the same results)."""
    return build_index(gallery, index, **({"device": "cpu"} if index == "exact" else {})).search(queries, k)


# -- Holidays ----------------------------------------------------------------------------

def read_rotations(path) -> Dict[str, int]:
    text = read_text(path)
    try:
        table = json.loads(text)
    except json.JSONDecodeError:
        import yaml
        table = yaml.safe_load(text)
    if not isinstance(table, dict) or not all(isinstance(v, int) and v % 90 == 0 for v in table.values()):
        raise DataError(path, None, "expected a map image name -> multiple of 90 degrees")
    return table


def rotate_clockwise(img: torch.Tensor, degrees: int) -> torch.Tensor:
    return torch.rot90(img, k=-(degrees // 90) % 4, dims=(1, 2))


class Holidays:
    def __init__(self, root, rotations=None):
        root = Path(root).expanduser()
        folder = root / "jpg" if (root / "jpg").is_dir() else root
        self.paths = list_images(folder)
        if not self.paths:
            raise DataError(folder, None, "Holidays: expected its images (GGGGNN.jpg), found none")
        try:
            ids = [int(p.stem) for p in self.paths]
        except ValueError as e:
            raise DataError(folder, None, f"Holidays: image names must be GGGGNN.jpg digits, got {e}") from None
        self.groups = [i // 100 for i in ids]
        self.queries = [n for n, i in enumerate(ids) if i % 100 == 0]
        if len({self.groups[q] for q in self.queries}) != len(set(self.groups)):
            raise DataError(folder, None, "Holidays: every group needs its GGGG00 query image")
        self.rotations = read_rotations(rotations) if isinstance(rotations, (str, Path)) else (rotations or {})

    def images(self) -> List[torch.Tensor]:
        return [rotate_clockwise(read_image(p), self.rotations.get(p.name, 0)) for p in self.paths]

    def score(self, emb: torch.Tensor) -> dict:
        return holidays_map(emb, self.groups, self.queries, ap="trapezoid")


# -- UKBench -----------------------------------------------------------------------------

class UKBench:
    def __init__(self, root):
        root = Path(root).expanduser()
        folder = root / "full" if (root / "full").is_dir() else root
        self.paths = list_images(folder)
        if not self.paths or len(self.paths) % 4:
            raise DataError(folder, None, f"UKBench: expected a multiple of 4 images, got {len(self.paths)}")

    def images(self) -> List[torch.Tensor]:
        return [read_image(p) for p in self.paths]

    def score(self, emb: torch.Tensor) -> dict:
        return ukbench_score(emb, torch.arange(len(self.paths)) // 4)


# -- Copydays ----------------------------------------------------------------------------

class Copydays:
    def __init__(self, root, distractors=None, subset: str = "strong", max_distractors: Optional[int] = None):
        root = Path(root).expanduser()
        self.originals = list_images(root)
        self.variants = list_images(root / subset)
        if not self.originals or not self.variants:
            raise DataError(root, None, f"Copydays: expected the originals here and the queries in {subset}/")
        group = {int(p.stem) // 100 * 100: n for n, p in enumerate(self.originals)}
        try:
            self.targets = [group[int(p.stem) // 100 * 100] for p in self.variants]
        except KeyError as e:
            raise DataError(root, None, f"Copydays: query of group {e} has no original") from None
        self.distractors = list_images(distractors)[:max_distractors] if distractors else []

    def gallery_images(self) -> List:
        return [read_image(p) for p in self.originals] + list(self.distractors)

    def query_images(self) -> List:
        return [read_image(p) for p in self.variants]

    def score(self, queries: torch.Tensor, gallery: torch.Tensor, ap: str = "trapezoid") -> dict:
        labels = torch.full((len(gallery),), -1, dtype=torch.long)
        labels[:len(self.originals)] = torch.arange(len(self.originals))
        return instance_map(queries, gallery, torch.as_tensor(self.targets), labels, ap=ap)


# -- Revisited Oxford / Paris -------------------------------------------------------------

PROTOCOLS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
             "hard": (("hard",), ("junk", "easy"))}


class Revisited:
    def __init__(self, root, dataset: str = "roxford5k", crop_query: bool = True):
        root = Path(root).expanduser()
        gnd_file = root / f"gnd_{dataset}.pkl"
        if not gnd_file.is_file():
            raise DataError(gnd_file, None, "Revisited: file not found (the dataset's ground truth)")
        with open(gnd_file, "rb") as f:
            cfg = pickle.load(f)
        self.folder, self.crop_query = root / "jpg", crop_query
        self.imlist, self.qimlist, self.gnd = cfg["imlist"], cfg["qimlist"], cfg["gnd"]
        if len(self.gnd) != len(self.qimlist):
            raise DataError(gnd_file, None, f"Revisited: {len(self.qimlist)} queries but {len(self.gnd)} ground truths")

    def _path(self, name: str) -> Path:
        return self.folder / (name if Path(name).suffix else name + ".jpg")

    def gallery_images(self) -> List[torch.Tensor]:
        return [read_image(self._path(n)) for n in self.imlist]

    def query_images(self) -> List[torch.Tensor]:
        out = []
        for name, g in zip(self.qimlist, self.gnd):
            img = read_image(self._path(name))
            out.append(crop_box(img, g["bbx"]) if self.crop_query and g.get("bbx") is not None else img)
        return out

    def score(self, queries: torch.Tensor, gallery: torch.Tensor) -> dict:
        out = {}
        for level, (pos_keys, junk_keys) in PROTOCOLS.items():
            pos = [np.concatenate([np.asarray(g[k], dtype=np.int64).reshape(-1) for k in pos_keys]) for g in self.gnd]
            junk = [np.concatenate([np.asarray(g[k], dtype=np.int64).reshape(-1) for k in junk_keys]) for g in self.gnd]
            # an item listed both as positive and junk counts as junk (np.isin, as revisitop)
            pos = [p[~np.isin(p, j)] for p, j in zip(pos, junk)]
            out[f"{level}_map"] = listed_map(queries, gallery, [p.tolist() for p in pos],
                                             [j.tolist() for j in junk])["map"]
        return out


# -- one call per benchmark --------------------------------------------------------------

def evaluate(model, benchmark: str, root, *, device="cpu", size: int = 224, batch_size: int = 32,
             distractors=None, rotations=None, dataset: str = "roxford5k", crop_query: bool = True,
             max_distractors: Optional[int] = None) -> dict:
    """Embeds a benchmark's images at ``size`` (largest side) and returns its scores."""
    tf = eval_transform("rect", size)
    emb = lambda images: embed_images(model, images, tf, device, batch_size)   # noqa: E731
    if benchmark == "holidays":
        b = Holidays(root, rotations)
        return b.score(emb(b.images()))
    if benchmark == "ukbench":
        b = UKBench(root)
        return b.score(emb(b.images()))
    if benchmark == "copydays":
        b = Copydays(root, distractors, max_distractors=max_distractors)
        return b.score(emb(b.query_images()), emb(b.gallery_images()))
    if benchmark in ("revisited", "roxford5k", "rparis6k"):
        b = Revisited(root, dataset if benchmark == "revisited" else benchmark, crop_query)
        return b.score(emb(b.query_images()), emb(b.gallery_images()))
    raise ValueError(f"evaluate: benchmark must be holidays, ukbench, copydays, roxford5k or rparis6k, "
                     f"got {benchmark!r}")


class RetrievalEvaluator:
    """A trainer evaluator (``evaluator(model, loader, *, device)``) that ignores the loader
    and scores a benchmark folder; metric names are prefixed with the benchmark."""

    def __init__(self, benchmark: str, root: str, size: int = 224, **options):
        self.benchmark, self.root, self.size, self.options = benchmark, root, size, options

    def __call__(self, model, loader, *, device) -> dict:
        scores = evaluate(model, self.benchmark, self.root, device=device, size=self.size, **self.options)
        return {f"{self.benchmark}_{k}": float(v) for k, v in scores.items()}
