"""``fusedembed embed MODEL INPUT --out FILE``: a trained model's embeddings of a folder of
images, a file of sentences or a dataset split, streamed to an embedding file
(:mod:`fusedembed.embedfile`).

INPUT is

* a folder: every image file under it, recursively (``.jpg``, ``.jpeg``, ``.png``, ``.gif``,
  ``.webp``: what torchvision.io decodes), id = the path relative to the folder;
* a text file: one sentence per line (blank lines ignored, repeated lines embedded once),
  id = the sentence;
* ``NAME:SPLIT``: a registered dataset built with its defaults for SPLIT (``scenes:test``), or
  ``recipe:SPLIT`` the model's recipe's ``data.SPLIT``; id = ``NAME:SPLIT:<index>``. Caption
  datasets give their images (``modality="image"``) or their captions (``"text"``).

Images are decoded and preprocessed in DataLoader workers, batches run on the GPU when there
is one (bf16 autocast). An image that cannot be decoded is skipped, listed (first lines on
the terminal, all in ``FILE.skipped.txt``) and counted; it never stops the run. Ids already
in FILE (or in the chunks an interrupted run left) are skipped, so rerunning the same command
resumes, and adding images to the folder then rerunning embeds only the new ones.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import by_image_size
from .embedfile import EmbeddingWriter
from .inference import IMAGE_EXTENSIONS, Embedder, collate_of, decode_image

MODALITIES = ("image", "text")
SHOWN_SKIPS = 10


class InputError(ValueError):
    """INPUT is not a folder, a text file or a dataset split that can be embedded."""


@dataclass
class Inputs:
    """What to embed: ids (unique), their modality, a description of where they come from
    (stored in the file, used to show results), and how to load items by index."""
    modality: str
    ids: List[str]
    source: dict
    items: Callable[[List[int]], Dataset]      # the items of these indices, errors as {"error": ...}
    collate: Callable
    parallel: bool = True                      # items may load in DataLoader workers
    notes: List[str] = field(default_factory=list)


class _Collate:
    """Batches {"i", "fields"} items with ``inner``, one batch per image size (a recipe may
    test images at their own size); items that failed become ``bad``."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, items):
        good = [it for it in items if "error" not in it]
        groups = by_image_size([it["fields"] for it in good])
        return {"groups": [([good[k]["i"] for k in ks], self.inner([good[k]["fields"] for k in ks]))
                           for ks in groups],
                "bad": [(it["i"], it["error"]) for it in items if "error" in it]}


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], indices: List[int], transform):
        self.paths, self.indices, self.transform = paths, indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        try:
            return {"i": i, "fields": {"image": self.transform(decode_image(self.paths[i]))}}
        except (ValueError, RuntimeError, OSError) as err:
            return {"i": i, "error": str(err)}


class _DatasetItems(Dataset):
    def __init__(self, dataset, indices: List[int], keys: Tuple[str, ...]):
        self.dataset, self.indices, self.keys = dataset, indices, keys

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        try:
            item = self.dataset[i]
        except Exception as err:  # an unreadable image of any dataset: skipped, never fatal
            return {"i": i, "error": f"{type(err).__name__}: {err}"}
        return {"i": i, "fields": {k: item[k] for k in self.keys if k in item}}


class _Texts(Dataset):
    def __init__(self, texts: Sequence[str], indices: List[int]):
        self.texts, self.indices = texts, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        return {"i": self.indices[j], "fields": self.texts[self.indices[j]]}


def image_files(root: Path) -> List[Path]:
    """Image files under ``root``, recursively, in sorted order (hidden folders skipped)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def folder_inputs(root: Path, embedder: Embedder) -> Inputs:
    paths = image_files(root)
    if not paths:
        raise InputError(f"INPUT folder {str(root)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, "
                         f"searched recursively)")
    transform = embedder.image_transform
    ids = [p.relative_to(root).as_posix() for p in paths]
    from .data import collate

    return Inputs("image", ids, {"kind": "folder", "root": str(root.resolve())},
                  lambda todo: _ImageFiles([str(p) for p in paths], todo, transform), _Collate(collate))


def text_inputs(path: Path, embedder: Embedder) -> Inputs:
    from .data.errors import text_lines

    texts, seen, repeated = [], set(), 0
    for _, line in text_lines(path):
        text = line.strip()
        if not text:
            continue
        if text in seen:
            repeated += 1
            continue
        seen.add(text)
        texts.append(text)
    if not texts:
        raise InputError(f"INPUT text file {str(path)!r} has no sentence (one per line)")
    notes = [f"{repeated} repeated line(s) embedded once"] if repeated else []

    def collate(items):
        good = [it for it in items if embedder.has_words(it["fields"])]
        return {"groups": [([it["i"] for it in good], embedder.text_batch([it["fields"] for it in good]))]
                if good else [],
                "bad": [(it["i"], "no word to embed") for it in items if it not in good]}

    return Inputs("text", texts, {"kind": "text", "path": str(path.resolve())},
                  lambda todo: _Texts(texts, todo), collate, parallel=False, notes=notes)


def parse_dataset_spec(spec: str) -> Tuple[str, str]:
    name, sep, split = spec.rpartition(":")
    if not sep or not name or not split:
        raise InputError(f"INPUT {spec!r} is neither an existing folder or file nor NAME:SPLIT "
                         f"(a registered dataset and split, e.g. scenes:test, or recipe:test)")
    return name, split


def build_dataset(source: dict):
    """The dataset an Inputs ``source`` of kind "dataset" names, in its view."""
    from .plugins import build

    dataset = build("dataset", source["config"], split=source["split"])
    if source.get("view") and hasattr(dataset, "with_view"):
        dataset = dataset.with_view(source["view"])
    return dataset


def dataset_inputs(spec: str, embedder: Embedder, modality: Optional[str]) -> Inputs:
    from .registry import RegistryError

    name, split = parse_dataset_spec(spec)
    if name == "recipe":
        config = getattr(embedder.stage_recipe.data, split, None) if split in ("train", "val", "test") else None
        if config is None:
            raise InputError(f"INPUT {spec!r}: the model's recipe has no data.{split}")
    else:
        config = {"name": name}
    source = {"kind": "dataset", "spec": spec, "config": config, "split": split}
    try:
        dataset = build_dataset(source)
    except RegistryError as err:
        raise InputError(f"INPUT {spec!r}: {err}") from None
    if hasattr(dataset, "with_view"):
        modality = modality or "image"
        source["view"] = "image" if modality == "image" else "text"
        dataset = dataset.with_view(source["view"])
    else:
        first = dataset[0] if len(dataset) else {}
        has = [m for m, key in (("image", "image"), ("text", "tokens")) if key in first]
        modality = modality or (has[0] if has else None)
        if modality not in has:
            raise InputError(f"INPUT {spec!r}: its items hold {', '.join(sorted(first)) or 'nothing'}, "
                             f"no {modality or 'image or tokens'} to embed")
    keys = ("image",) if modality == "image" else ("tokens",)
    ids = [f"{spec}:{i}" for i in range(len(dataset))]
    return Inputs(modality, ids, source, lambda todo: _DatasetItems(dataset, todo, keys),
                  _Collate(collate_of(dataset)))


def make_inputs(spec: str, embedder: Embedder, modality: Optional[str] = None) -> Inputs:
    """The Inputs of an INPUT argument (see the module docstring)."""
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():
        kind = "image" if path.is_dir() else "text"
        if modality not in (None, kind):
            raise InputError(f"INPUT {spec!r} is a {'folder of images' if path.is_dir() else 'text file'}; "
                             f"--modality {modality} applies to dataset splits only")
        return folder_inputs(path, embedder) if path.is_dir() else text_inputs(path, embedder)
    return dataset_inputs(spec, embedder, modality)


@dataclass
class EmbedResult:
    path: Path
    added: int                    # rows embedded by this run
    already: int                  # rows the file held before
    resumed: int                  # rows an interrupted run had left in chunks
    skipped: List[Tuple[str, str]]
    total: int                    # rows in the file now
    modality: str
    dim: Optional[int]
    output: Optional[str]
    notes: List[str]


def embed(embedder: Embedder, inputs: Inputs, out, *, batch_size: int = 64, workers: int = 0,
          dtype: str = "float32", progress: Optional[bool] = True, chunk_rows: int = 4096) -> EmbedResult:
    """Embeds the ids of ``inputs`` that ``out`` does not hold yet; see the module docstring.
    ``progress``: a progress bar (None: only at a terminal)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    out = Path(out)
    stamp = model_stamp(embedder.source)
    meta = {"model": embedder.source, "model_stamp": stamp, "modality": inputs.modality, "source": inputs.source}
    writer = EmbeddingWriter(out, meta, dtype=dtype, chunk_rows=chunk_rows)
    already = len(writer.existing) if writer.existing is not None else 0
    todo = [i for i, id_ in enumerate(inputs.ids) if id_ not in writer.done]
    skipped: List[Tuple[str, str]] = []
    if todo:
        loader = DataLoader(inputs.items(todo), batch_size=batch_size, collate_fn=inputs.collate,
                            num_workers=workers if inputs.parallel else 0,
                            pin_memory=embedder.device.type == "cuda")
        bar = tqdm(total=len(todo), desc=f"embed {inputs.modality}s", unit=inputs.modality[:3],
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        try:
            with bar:
                for batch in loader:
                    for i, reason in batch["bad"]:
                        skipped.append((inputs.ids[i], reason))
                        if len(skipped) <= SHOWN_SKIPS:
                            bar.write(f"skipped {inputs.ids[i]}: {reason}")
                    for index, group in batch["groups"]:
                        key, emb = embedder.embed_batch(group, inputs.modality)
                        writer.add([inputs.ids[i] for i in index], emb, key)
                    bar.update(sum(len(index) for index, _ in batch["groups"]) + len(batch["bad"]))
        except KeyboardInterrupt:
            writer.flush()
            raise
    total = writer.close()
    _write_skips(out, skipped)
    return EmbedResult(out, writer.added, already, writer.resumed, skipped, total, inputs.modality, writer.dim,
                       writer.meta.get("output"), inputs.notes)


def skips_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.txt")


def _write_skips(out: Path, skipped) -> None:
    path = skips_path(out)
    if not skipped:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{id_}\t{reason}\n" for id_, reason in skipped)


def model_stamp(model_path: str) -> str:
    """Size and modification time of the model's weights: a retrained model at the same path
    is another model, whose rows must not join the old ones."""
    path = Path(model_path)
    weights = path / "model.safetensors" if path.is_dir() else path
    st = weights.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def summary(result: EmbedResult) -> str:
    """What the run did, for the terminal: counts, skips, what the file holds."""
    noun = "images" if result.modality == "image" else "texts"
    parts = [f"embedded {result.added} {noun}"]
    if result.resumed:
        parts.append(f"{result.resumed} more from the interrupted run")
    if result.already:
        parts.append(f"{result.already} already in the file")
    line = ", ".join(parts)
    if result.skipped:
        line += (f"; skipped {len(result.skipped)} that could not be read (all listed in "
                 f"{skips_path(result.path)})")
    line += (f"\n{result.path}: {result.total} embeddings" +
             (f" of dim {result.dim} ({result.output})" if result.dim else ""))
    return "\n".join([*(f"note: {n}" for n in result.notes), line])

