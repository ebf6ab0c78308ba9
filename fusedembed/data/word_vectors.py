"""Pretrained word vectors from a local word2vec file (never downloaded), for text encoders
whose input layer is fixed word vectors.

``read_word_vectors(path, wanted=None)``: ``{word: float32 vector}`` from the text format (an
optional ``<count> <dim>`` header, then ``word v1 ... vdim`` per line) or the binary one (the
GoogleNews format: the header, then per word ``word<space>`` and dim little-endian float32),
told apart by the header and first record. ``wanted`` keeps only those words (the GoogleNews
file has 3M); ``lower`` also files each vector under its lower-cased word ("Circle" serves a
lower-cased vocabulary's "circle"), unless that word has its own.

``embedding_matrix(vocab, path, dim)``: (len(vocab), dim) float32, row i the vector of word i
(as it is, else that of a file word that lower-cases to it), small random rows (seeded) for words the file lacks, zeros
for ``<pad>``; returns the matrix and the number of words found.
"""

from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .vocab import PAD_ID, Vocab


def _header(line: bytes):
    parts = line.split()
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 and all(p.isdigit() for p in parts) else None


def _is_binary(path: Path) -> bool:
    """Binary when the line after a ``<count> <dim>`` header is not ``word`` and dim numbers."""
    with open(path, "rb") as f:
        header = _header(f.readline())
        if header is None:
            return False
        first = f.readline()
    try:
        parts = first.decode("utf-8").split()
        np.array(parts[1:], dtype=np.float32)
        return len(parts) != header[1] + 1
    except (UnicodeDecodeError, ValueError):
        return True


def _keep(out: dict, exact_words: set, word: str, record, wanted, lower: bool, binary: bool) -> None:
    """Stores the vector of ``word`` when wanted; with ``lower`` also under ``word.lower()``
    unless that word has a vector of its own (an exact entry always wins)."""
    exact = wanted is None or word in wanted
    folded = lower and word.lower() != word and (wanted is None or word.lower() in wanted)
    if not (exact or folded):
        return
    vec = np.frombuffer(record, dtype="<f4").copy() if binary else np.asarray(record, dtype=np.float32)
    if exact:
        out[word] = vec
        exact_words.add(word)
    if folded and word.lower() not in exact_words:
        out.setdefault(word.lower(), vec)


def read_word_vectors(path, wanted=None, lower: bool = False) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"word vectors: {str(path)!r} is not a file (vectors are read from a "
                                f"local file only)")
    wanted = None if wanted is None else set(wanted)
    out, exact_words = {}, set()
    if _is_binary(path):
        with open(path, "rb") as f:
            count, dim = _header(f.readline())
            for _ in range(count):
                word = bytearray()
                while (c := f.read(1)) not in (b" ", b""):
                    if c != b"\n":
                        word += c
                record = f.read(4 * dim)
                if len(record) < 4 * dim:
                    raise DataError(path, None, f"binary word2vec file ends inside the vector of "
                                    f"{word.decode(errors='replace')!r}")
                _keep(out, exact_words, word.decode("utf-8", errors="replace"), record, wanted, lower, binary=True)
        return out
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if n == 1 and _header(line.encode()):
                continue
            if len(parts) > 1:
                try:
                    _keep(out, exact_words, parts[0], parts[1:], wanted, lower, binary=False)
                except ValueError:
                    raise DataError(path, f"line {n}", f"expected a word and numbers, got {line[:60]!r}") from None
    return out


def embedding_matrix(vocab: Vocab, path, dim: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    vectors = read_word_vectors(path, set(vocab.itos), lower=True)
    weight = torch.randn(len(vocab), dim, generator=torch.Generator().manual_seed(seed)) * 0.01
    found = 0
    for i, word in enumerate(vocab.itos):
        vec = vectors.get(word, vectors.get(word.lower()))
        if vec is None:
            continue
        if len(vec) != dim:
            raise ValueError(f"embedding_matrix: dim is {dim} but {path} has {len(vec)}-d vectors "
                             f"(word {word!r})")
        weight[i] = torch.from_numpy(vec)
        found += 1
    weight[PAD_ID] = 0
    return weight, found
