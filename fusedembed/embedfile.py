"""Embedding files: what ``fusedembed embed`` writes and ``search`` / ``serve`` read.

Two formats, chosen by the file name:

* ``.safetensors``: tensor ``embeddings`` (N, D) float16 or float32; the ids as UTF-8 bytes
  (``ids``, uint8) cut by ``id_offsets`` (N + 1, int64), so any string is an id; what made the
  file (model, model output, input source) as JSON under the metadata key ``fusedembed``.
  Loads with the ``safetensors`` library; rows are read lazily.
* ``.npy``: the (N, D) array (memory-mapped when read), with ``<file>.json`` beside it holding
  the ids and the same description.

Writing streams: rows go to chunk files in ``.<name>.parts/`` next to the output as they come
(each chunk written to a temporary name, then renamed), and :meth:`EmbeddingWriter.close`
streams the chunks into the final file, after the rows the file already held, so memory
holds one chunk at a time whatever N. An interrupted run leaves its chunks; the next run with
the same output skips every id in them and in the file (``done``) and appends the rest.
"""

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch

FORMAT = "fusedembed-embeddings"
VERSION = 1
DTYPES = {"float32": (np.float32, "F32"), "float16": (np.float16, "F16")}
SUFFIXES = (".safetensors", ".npy")
# What must agree for rows of two runs to live in one file (the output key follows from the
# model and the modality).
COMPATIBLE = ("model", "model_stamp", "modality", "source", "dtype")


class EmbeddingFileError(ValueError):
    pass


def _suffix(path: Path) -> str:
    if path.suffix not in SUFFIXES:
        raise EmbeddingFileError(f"embedding file {str(path)!r}: the name must end in .safetensors or .npy")
    return path.suffix


def _encode_ids(ids: Sequence[str]):
    raw = [str(i).encode("utf-8") for i in ids]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in raw], out=offsets[1:])
    return offsets, b"".join(raw)


def _decode_ids(offsets: np.ndarray, data: bytes) -> List[str]:
    return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _write_safetensors(path: Path, rows: int, dim: int, dtype: str, blocks: Iterable[np.ndarray],
                       ids: Sequence[str], meta: dict) -> None:
    """The safetensors layout written by hand so that the rows stream from ``blocks``
    (the library's writer needs every tensor in memory): 8-byte little-endian header size,
    the JSON header (space-padded to 8 bytes), then the tensors' bytes in offset order."""
    np_dtype, code = DTYPES[dtype]
    offsets, id_bytes = _encode_ids(ids)
    emb = rows * dim * np.dtype(np_dtype).itemsize
    header = {"__metadata__": {"fusedembed": json.dumps(meta, sort_keys=True)},
              "embeddings": {"dtype": code, "shape": [rows, dim], "data_offsets": [0, emb]},
              "id_offsets": {"dtype": "I64", "shape": [rows + 1], "data_offsets": [emb, emb + offsets.nbytes]},
              "ids": {"dtype": "U8", "shape": [len(id_bytes)],
                      "data_offsets": [emb + offsets.nbytes, emb + offsets.nbytes + len(id_bytes)]}}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np_dtype)
            f.write(block.tobytes())
            written += len(block)
        f.write(offsets.tobytes())
        f.write(id_bytes)
    if written != rows:
        raise RuntimeError(f"{path}: wrote {written} rows, expected {rows}")


def _write_npy(path: Path, rows: int, dim: int, dtype: str, blocks: Iterable[np.ndarray],
               ids: Sequence[str], meta: dict) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[dtype][0], shape=(rows, dim))
    at = 0
    for block in blocks:
        out[at:at + len(block)] = block
        at += len(block)
    out.flush()
    del out
    if at != rows:
        raise RuntimeError(f"{path}: wrote {at} rows, expected {rows}")
    side = _sidecar(path)
    tmp = side.with_name(side.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"fusedembed": meta, "ids": list(ids)}, f)
    os.replace(tmp, side)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


class EmbeddingFile:
    """An embedding file opened for reading: ``ids``, ``meta`` (the description), ``shape``,
    ``dtype``; ``file[a:b]`` reads rows a..b as a tensor (lazily: the whole file is never
    loaded unless asked, e.g. by ``file[:]``)."""

    def __init__(self, path):
        self.path = Path(path)
        suffix = _suffix(self.path)
        if not self.path.is_file():
            raise EmbeddingFileError(f"embedding file {str(self.path)!r} does not exist")
        from safetensors import SafetensorError, safe_open

        try:
            if suffix == ".safetensors":
                self._st = safe_open(str(self.path), framework="pt")
                self.meta = json.loads((self._st.metadata() or {})["fusedembed"])
                offsets = self._st.get_tensor("id_offsets").numpy()
                self.ids = _decode_ids(offsets, self._st.get_tensor("ids").numpy().tobytes())
                self._rows = self._st.get_slice("embeddings")
                self.shape = tuple(self._rows.get_shape())
            else:
                self._array = np.load(self.path, mmap_mode="r")
                side = json.loads(_sidecar(self.path).read_text(encoding="utf-8"))
                self.meta, self.ids = side["fusedembed"], side["ids"]
                self.shape = tuple(self._array.shape)
        except (KeyError, OSError, ValueError, UnicodeDecodeError, SafetensorError) as err:
            raise EmbeddingFileError(f"{self.path} is not a fusedembed embedding file ({type(err).__name__}: "
                                     f"{err}); write one with `fusedembed embed`") from None
        if self.meta.get("format") != FORMAT or len(self.shape) != 2 or len(self.ids) != self.shape[0]:
            raise EmbeddingFileError(f"{self.path} is not a fusedembed embedding file (format "
                                     f"{self.meta.get('format')!r}, shape {self.shape}, {len(self.ids)} ids)")
        self.dtype = self.meta.get("dtype", "float32")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def __getitem__(self, rows) -> torch.Tensor:
        if not isinstance(rows, slice):
            raise TypeError("EmbeddingFile rows are read by slice: file[a:b]")
        if hasattr(self, "_rows"):
            return self._rows[rows]
        return torch.from_numpy(np.array(self._array[rows]))

    def blocks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        for a in range(0, len(self), rows):
            yield self[a:a + rows].numpy()


class EmbeddingWriter:
    """Appends (id, embedding) rows to ``path`` (see the module docstring): ``done`` holds
    the ids already stored (in the file, or in the chunks of an interrupted run); ``add``
    the next rows; ``close`` writes the file. ``meta`` describes the rows; a file (or chunks)
    already there must agree on :data:`COMPATIBLE`, else EmbeddingFileError."""

    def __init__(self, path, meta: dict, *, dtype: str = "float32", chunk_rows: int = 4096):
        if dtype not in DTYPES:
            raise EmbeddingFileError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if chunk_rows < 1:
            raise EmbeddingFileError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.path = Path(path)
        _suffix(self.path)
        self.meta = {"format": FORMAT, "version": VERSION, **meta, "dtype": dtype}
        self.dtype, self.chunk_rows = dtype, chunk_rows
        self.parts = self.path.with_name(f".{self.path.name}.parts")
        self.existing = EmbeddingFile(self.path) if self.path.exists() else None
        self.chunks = sorted(self.parts.glob("chunk-*.safetensors")) if self.parts.is_dir() else []
        previous = ([(self.existing, str(self.path))] if self.existing is not None else []) + [
            (EmbeddingFile(c), f"{c} (left by an interrupted run)") for c in self.chunks]
        for made, where in previous:
            self._check(made.meta, where)
        done = [i for made, _ in previous for i in made.ids]
        self.done = set(done)
        self.resumed = len(done) - (len(self.existing) if self.existing is not None else 0)
        self.dim: Optional[int] = previous[0][0].dim if previous else None
        if previous:
            self.meta["output"] = previous[0][0].meta.get("output")
        self._ids: List[str] = []
        self._rows: List[np.ndarray] = []
        self.added = 0

    def _check(self, other: Dict, where: str) -> None:
        for key in COMPATIBLE:
            if other.get(key) != self.meta.get(key):
                raise EmbeddingFileError(
                    f"{where} holds embeddings with {key} = {other.get(key)!r}, this run makes {key} = "
                    f"{self.meta.get(key)!r}; rows of both cannot share one file: choose another --out, or "
                    f"remove {self.path} (and {self.parts})")

    def add(self, ids: Sequence[str], embeddings: torch.Tensor, output: str) -> None:
        """Rows of the model output ``output`` (``image_embedding``, ...)."""
        if self.meta.get("output") not in (None, output):
            raise EmbeddingFileError(f"{self.path} holds {self.meta['output']} rows, not {output}")
        self.meta["output"] = output
        x = embeddings.detach().float().cpu().numpy()
        if x.ndim != 2 or len(x) != len(ids):
            raise ValueError(f"add: {len(ids)} ids for embeddings of shape {tuple(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        elif x.shape[1] != self.dim:
            raise ValueError(f"add: embeddings of dim {x.shape[1]}, the file's are {self.dim}")
        if not np.isfinite(x).all():
            bad = [ids[i] for i in np.nonzero(~np.isfinite(x).all(1))[0][:3]]
            raise ValueError(f"the model returned NaN/inf embeddings (for {', '.join(map(repr, bad))})")
        self._ids += list(ids)
        self._rows.append(x)
        self.added += len(ids)
        if len(self._ids) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows as one chunk (atomically)."""
        if not self._ids:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        rows = np.concatenate(self._rows)
        chunk = self.parts / f"chunk-{len(self.chunks):06d}.safetensors"
        tmp = chunk.with_name(chunk.name + ".tmp")
        _write_safetensors(tmp, len(rows), rows.shape[1], self.dtype, [rows], self._ids, self.meta)
        os.replace(tmp, chunk)
        self.chunks.append(chunk)
        self._ids, self._rows = [], []

    def close(self) -> int:
        """Writes the file (the rows it held, then every chunk), removes the chunks; the row
        count. Nothing is written when no row was added or resumed."""
        self.flush()
        if not self.chunks:
            shutil.rmtree(self.parts, ignore_errors=True)
            return len(self.existing) if self.existing is not None else 0
        sources = ([self.existing] if self.existing is not None else []) + [EmbeddingFile(c) for c in self.chunks]
        ids = [i for s in sources for i in s.ids]
        if len(set(ids)) != len(ids):
            raise EmbeddingFileError(f"{self.path}: duplicate ids among the rows to write")

        def blocks():
            for source in sources:
                yield from source.blocks()

        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        write = _write_safetensors if self.path.suffix == ".safetensors" else _write_npy
        try:
            write(tmp, len(ids), self.dim, self.dtype, blocks(), ids, self.meta)
            if self.path.suffix == ".npy":      # the sidecar was written for the temporary name
                os.replace(_sidecar(tmp), _sidecar(self.path))
            os.replace(tmp, self.path)
        finally:
            for leftover in (tmp, _sidecar(tmp)):
                leftover.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(ids)
