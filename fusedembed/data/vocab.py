"""Tokenizer and vocabulary shared by every caption dataset.

Token ids: ``<pad>`` = 0 (what :func:`~fusedembed.data.collate.collate` pads with, so an
embedding with ``padding_idx=0`` ignores it), ``<unk>`` = 1, then the words by decreasing
count in the training captions, ties alphabetical — the same captions always give the same ids.
"""

import json
import os
import re
from collections import Counter
from typing import Iterable, Sequence

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-cases and keeps runs of letters/digits (with an inner apostrophe: "man's");
    punctuation is dropped. Matches the tokens of the Karpathy JSON for plain English."""
    return _WORD.findall(text.lower())


class Vocab:
    """Word ↔ id map with ``<pad>``=0 and ``<unk>``=1."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [PAD, UNK]:
            words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        if len(set(words)) != len(words):
            raise ValueError("Vocab: duplicate words")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocab":
        """From tokenized training captions: words seen at least ``min_count`` times, the
        ``max_size`` most frequent (special tokens not counted)."""
        counts = Counter(w for tokens in token_lists for w in tokens)
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in (PAD, UNK)),
                      key=lambda w: (-counts[w], w))
        return cls(kept[:max_size] if max_size is not None else kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"

    pad_id = PAD_ID
    unk_id = UNK_ID

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids back to words; padding is dropped."""
        return [self.itos[i] for i in map(int, ids) if i != PAD_ID]

    def save(self, path) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.itos, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "Vocab":
        with open(path, encoding="utf-8") as f:
            words = json.load(f)
        if not isinstance(words, list) or words[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a fusedembed vocabulary (a JSON list starting "
                             f"with {PAD!r}, {UNK!r})")
        return cls(words)
