"""Word vectors from a local word2vec file, text or binary format (never downloaded).

Text: an optional header ``<count> <dim>``, then ``word v1 ... vdim`` per line. Binary (the
GoogleNews format): header line ``<count> <dim>``, then per word ``word<space>`` and dim
little-endian float32. The format is detected from the header and first record.
"""

from pathlib import Path

import numpy as np
import torch

from fusedembed.data import Vocab


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            return False          # headerless text file
        dim = int(header[1])
        first = f.readline()
    # Text: the first record is one line of a word and dim numbers; binary bytes are not.
    try:
        parts = first.decode("utf-8").split()
        np.array(parts[1:], dtype=np.float32)
    except (UnicodeDecodeError, ValueError):
        return True
    return len(parts) != dim + 1


def read_word2vec(path, wanted=None) -> dict:
    """``{word: float32 vector}``, only the words in ``wanted`` when given (saves memory on
    the 3M-word GoogleNews file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"word2vec_path {str(path)!r} is not a file (vectors are read from a "
                                f"local file only)")
    out = {}
    if _is_binary(path):
        with open(path, "rb") as f:
            count, dim = map(int, f.readline().split())
            for _ in range(count):
                word = bytearray()
                while (c := f.read(1)) != b" ":
                    if c == b"":
                        raise ValueError(f"{path}: truncated binary word2vec file")
                    if c != b"\n":
                        word += c
                vec = np.frombuffer(f.read(4 * dim), dtype="<f4")
                w = word.decode("utf-8", errors="replace")
                if wanted is None or w in wanted:
                    out[w] = vec.copy()
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if n == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) > 1 and (wanted is None or parts[0] in wanted):
                out[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    return out


def vocab_vectors(word2vec_path, vocab_path, vocab_size: int, dim: int) -> torch.Tensor:
    """(vocab_size, dim) embedding matrix: word2vec vectors for the vocabulary's words (also
    tried lower-cased), small random ones for words it lacks, zeros for ``<pad>``."""
    vocab = Vocab.load(vocab_path)
    if len(vocab) != vocab_size:
        raise ValueError(f"textcnn: vocab_size is {vocab_size} but {vocab_path} holds {len(vocab)} words")
    vectors = read_word2vec(word2vec_path, set(vocab.itos) | {w.lower() for w in vocab.itos})
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab_size, dim, generator=gen) * 0.01
    for i, word in enumerate(vocab.itos):
        vec = vectors.get(word, vectors.get(word.lower()))
        if vec is not None:
            if len(vec) != dim:
                raise ValueError(f"textcnn: word_dim is {dim} but {word2vec_path} has {len(vec)}-d vectors")
            weight[i] = torch.from_numpy(vec)
    weight[0] = 0
    return weight
