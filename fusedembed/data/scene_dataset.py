"""The built-in demo dataset "scenes": synthetic captioned scenes, generated from a seed,
cached on disk, identical byte for byte on every machine.

Image i of a split is drawn from its own streams, ``Generator(PCG64([seed, split, i, 0]))``
for the content (objects, captions) and ``[..., 1]`` for the pixels. So a split of 50 images
is the first 50 of the default 8000, captions and the vocabulary do not depend on the image
size, and nothing depends on the order or the machine that generates.

Cache: ``<root>/<split>-n<N>-s<size>-seed<seed>-v<VERSION>-<hash>/`` with ``images.npy``
(N, H, W, 3 uint8; memory-mapped at use), ``scenes.json`` (objects, captions, word→object
truth) and ``hierarchy.txt`` (the class dictionary in the ML-Images format); vocabularies as
``<root>/vocab-seed<seed>-n<N>-v<VERSION>.json``. ``root`` defaults to
``$FUSEDEMBED_DATA/scenes``, else ``$XDG_CACHE_HOME/fusedembed/scenes`` (``~/.cache/…``).
Each split is written to a temporary folder and renamed into place, so an interrupted
generation never leaves a partial cache; processes sharing the cache generate a split once.
"""

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import scene_layout as layout
from .captions import CaptionDataset
from .image_io import ResizeThen
from .scene_render import render
from .vocab import Vocab

VERSION = 1                 # bump whenever generation changes: it is part of the cache key
SPLITS = {"train": (0, 8000), "val": (1, 1000), "test": (2, 1000)}   # stream id, default size
CLASSES = layout.CLASSES
CLASS_PARENTS = layout.CLASS_PARENTS


def default_root() -> Path:
    if os.environ.get("FUSEDEMBED_DATA"):
        return Path(os.environ["FUSEDEMBED_DATA"]) / "scenes"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fusedembed" / "scenes"


def _streams(seed: int, split: str, i: int):
    code = SPLITS[split][0]
    return (np.random.Generator(np.random.PCG64([seed, code, i, 0])),
            np.random.Generator(np.random.PCG64([seed, code, i, 1])))


def _check(split, num_images, image_size, seed):
    if split not in SPLITS:
        raise ValueError(f"scenes: split must be one of {tuple(SPLITS)}, got {split!r}")
    if num_images < 1:
        raise ValueError(f"scenes: num_images must be >= 1, got {num_images}")
    if image_size < 16:
        raise ValueError(f"scenes: image_size must be >= 16, got {image_size}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"scenes: seed must be a non-negative integer, got {seed}")


def split_dir(root, split: str, num_images: int, image_size: int, seed: int) -> Path:
    params = {"split": split, "num_images": num_images, "image_size": image_size,
              "seed": seed, "version": VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{split}-n{num_images}-s{image_size}-seed{seed}-v{VERSION}-{digest}"
    return Path(root if root is not None else default_root()) / name


def write_hierarchy(path) -> None:
    """Class dictionary with parents, ML-Images layout: ``<id>\\t<parent index>\\t<name>``."""
    with open(path, "w", encoding="utf-8") as f:
        for name, parent in zip(CLASSES, CLASS_PARENTS):
            f.write(f"{name.replace(' ', '_')}\t{parent}\t{name}\n")


def _generate_range(split, start, stop, image_size, seed):
    images = np.empty((stop - start, image_size, image_size, 3), dtype=np.uint8)
    scenes = []
    for k, i in enumerate(range(start, stop)):
        content, pixels = _streams(seed, split, i)
        scene = layout.sample_scene(content)
        images[k] = render(layout.objects_from(scene), image_size, pixels)
        scenes.append(scene)
    return images, scenes


def _generate_chunk(args):
    return _generate_range(*args)


def generate(split: str, num_images: int, image_size: int = 64, seed: int = 0,
             progress: bool = True, workers: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Draws a split in memory: (images (N, H, W, 3) uint8, scene dicts). ``workers``
    processes (default: the CPU count, at most 8) share the work; every image has its own
    random streams, so the result does not depend on how it is split."""
    _check(split, num_images, image_size, seed)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    chunk = 250
    jobs = [(split, a, min(a + chunk, num_images), image_size, seed)
            for a in range(0, num_images, chunk)]
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    scenes = []
    bar = tqdm(total=num_images, desc=f"scenes/{split}: generating", unit="img",
               disable=not progress, leave=False)
    with bar:
        if workers > 1 and len(jobs) > 1:
            # fork where available: the workers need no re-import of torch; they run numpy only.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            with ctx.Pool(min(workers, len(jobs))) as pool:
                results = pool.imap(_generate_chunk, jobs)
                for (_, a, b, _, _), (imgs, scn) in zip(jobs, results):
                    images[a:b] = imgs
                    scenes.extend(scn)
                    bar.update(b - a)
        else:
            for job in jobs:
                imgs, scn = _generate_range(*job)
                images[job[1]:job[2]] = imgs
                scenes.extend(scn)
                bar.update(job[2] - job[1])
    return images, scenes


def ensure_split(split: str = "train", root=None, num_images: int | None = None,
                 image_size: int = 64, seed: int = 0, progress: bool = True,
                 workers: int | None = None) -> Path:
    """The cache folder of a split, generating it first if absent (atomically)."""
    num_images = SPLITS[split][1] if num_images is None and split in SPLITS else num_images
    _check(split, num_images, image_size, seed)
    final = split_dir(root, split, num_images, image_size, seed)
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # One process generates, the others sharing the cache (DDP ranks) wait and use its copy: a
    # rank that found the folder incomplete must not take the other's fresh copy for a damaged one.
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final):
            return final
        if final.exists():                    # damaged by hand: rebuild
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        os.chmod(tmp, 0o755)                  # mkdtemp's 0700 would hide a shared cache
        try:
            images, scenes = generate(split, num_images, image_size, seed, progress, workers)
            np.save(tmp / "images.npy", images)
            meta = {"params": {"split": split, "num_images": num_images, "image_size": image_size,
                               "seed": seed, "version": VERSION}, "scenes": scenes}
            with open(tmp / "scenes.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, sort_keys=True, separators=(",", ":"))
            write_hierarchy(tmp / "hierarchy.txt")
            try:
                os.rename(tmp, final)
            except OSError:                   # a machine sharing the folder (no common lock) was first
                if not _complete(final):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _complete(split_folder: Path) -> bool:
    return (split_folder / "images.npy").is_file() and (split_folder / "scenes.json").is_file()


def scene_vocab(seed: int = 0, num_train: int = SPLITS["train"][1], root=None,
                progress: bool = True, tokens=None) -> Vocab:
    """The vocabulary of the first ``num_train`` train captions, cached. ``tokens``: those
    captions' token lists when at hand; else they are drawn again (content streams only, no
    pixels: a few seconds)."""
    root = Path(root if root is not None else default_root())
    path = root / f"vocab-seed{seed}-n{num_train}-v{VERSION}.json"
    if path.is_file():
        return Vocab.load(path)
    if tokens is None:
        tokens = []
        for i in tqdm(range(num_train), desc="scenes: vocabulary", unit="img",
                      disable=not progress, leave=False):
            tokens.extend(layout.sample_scene(_streams(seed, "train", i)[0])["tokens"])
    vocab = Vocab.build(tokens)
    root.mkdir(parents=True, exist_ok=True)
    vocab.save(path)
    return vocab


def _read_meta(directory: Path) -> dict:
    with open(directory / "scenes.json", encoding="utf-8") as f:
        return json.load(f)


class ScenesDataset(CaptionDataset):
    """A cached split of "scenes" (build it with :func:`scenes`). Besides the common keys it
    gives ``labels``, ``boxes``, ``objects``, ``object_groups`` and ``word_objects``."""

    classes = CLASSES
    class_parents = CLASS_PARENTS

    def __init__(self, directory, vocab: Vocab, view: str = "pair",
                 transform: Callable | None = None, seed: int = 0, meta: dict | None = None):
        self.directory = Path(directory)
        meta = meta if meta is not None else _read_meta(self.directory)
        self.params, raw = meta["params"], meta["scenes"]
        self.split, self.image_size = self.params["split"], self.params["image_size"]
        super().__init__([s["texts"] for s in raw], [s["tokens"] for s in raw], vocab, view,
                         transform, seed)
        self._images = None
        self._pid = None
        # Flat per-object and per-token arrays (see CaptionDataset on why flat).
        objs = [o for s in raw for o in s["objects"]]
        self._objects = torch.tensor(objs, dtype=torch.float64)
        self._obj_offsets = torch.cumsum(torch.tensor([0] + [len(s["objects"]) for s in raw]), 0)
        self._groups = torch.tensor([g for s in raw for g in
                                     layout.groups_of(layout.objects_from(s))], dtype=torch.long)
        self._word_objects = torch.tensor([o for s in raw for per in s["word_objects"]
                                           for o in per], dtype=torch.long)
        labels = torch.zeros(len(raw), len(CLASSES), dtype=torch.uint8)
        for i, s in enumerate(raw):
            labels[i, layout.labels_of(layout.objects_from(s))] = 1
        self.labels = labels

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None               # reopen the memory map in each worker
        return state

    def _array(self):
        if self._images is None or self._pid != os.getpid():
            self._images = np.load(self.directory / "images.npy", mmap_mode="r")
            self._pid = os.getpid()
        return self._images

    def image_array(self, i: int) -> np.ndarray:
        """Image i as stored: (H, W, 3) uint8."""
        return np.asarray(self._array()[i])

    def load_image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.image_array(i).copy()).permute(2, 0, 1).float().div_(255)

    @property
    def file_transform(self):
        """Scenes are drawn at ``image_size``: an image file is resized to it, then ``transform``."""
        return ResizeThen(self.image_size, self.transform)

    def boxes(self, i: int) -> torch.Tensor:
        """(K, 4) float32 boxes x0, y0, x1, y1 in pixels (of the stored image)."""
        objs = self._objects[int(self._obj_offsets[i]):int(self._obj_offsets[i + 1])]
        ext = torch.tensor([layout.SHAPE_EXTENT[layout.SHAPES[int(s)]] for s in objs[:, 0]],
                           dtype=torch.float64).reshape(-1, 4)
        centre = objs[:, [3, 4, 3, 4]]
        return ((centre + ext * objs[:, 5:6]) * self.image_size).float()

    def extra(self, i: int, c: int, with_image: bool) -> dict:
        a, b = int(self._obj_offsets[i]), int(self._obj_offsets[i + 1])
        j = int(self._first_caption[i]) + c
        # Copies, not views of the flat arrays (see CaptionDataset.tokens_of).
        out = {"labels": self.labels[i].float(),
               "word_objects": self._word_objects[self._offsets[j]:self._offsets[j + 1]].clone()}
        if with_image:
            out["boxes"] = self.boxes(i)
            out["objects"] = self._objects[a:b, :3].long()
            out["object_groups"] = self._groups[a:b].clone()
        return out


def scenes(split: str = "train", root=None, num_images: int | None = None,
           image_size: int = 64, seed: int = 0, view: str = "pair", vocab: Vocab | None = None,
           train_images: int | None = None, transform: Callable | None = None,
           progress: bool = True, workers: int | None = None) -> ScenesDataset:
    """The demo dataset (built-in "scenes").

    Args:
      split: "train" | "val" | "test" (default sizes 8000 / 1000 / 1000).
      root: cache folder (default: see the module docstring).
      num_images: size of this split (a prefix of the default-size split).
      image_size: side in pixels (square RGB).
      seed: generation seed; also drives the per-epoch caption draw of the "image" view.
      view: "pair" (every image–caption pair), "image" (one item per image, a caption drawn
        per epoch) or "text" (captions only) — see :class:`.captions.CaptionDataset`.
      vocab: the vocabulary; default: that of the train split of ``train_images`` images
        (default: ``num_images`` when split is "train", else 8000).
      transform: applied to the float CHW image in [0, 1].
      progress: show a progress bar while generating.
      workers: generation processes (default: CPU count, at most 8).
    """
    if split not in SPLITS:
        raise ValueError(f"scenes: split must be one of {tuple(SPLITS)}, got {split!r}")
    n = SPLITS[split][1] if num_images is None else int(num_images)
    directory = ensure_split(split, root, n, image_size, seed, progress, workers)
    meta = _read_meta(directory)
    if vocab is None:
        n_train = train_images if train_images is not None else (
            n if split == "train" else SPLITS["train"][1])
        tokens = None
        if split == "train" and n_train == n:          # its own captions: no second draw
            tokens = [t for s in meta["scenes"] for t in s["tokens"]]
        vocab = scene_vocab(seed, n_train, root, progress, tokens)
    return ScenesDataset(directory, vocab, view, transform, seed, meta)
