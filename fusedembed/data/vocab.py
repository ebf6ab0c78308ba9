"""Tokenizer and vocabulary shared by every caption dataset.

Token ids: ``<pad>`` = 0 (what :func:`~fusedembed.data.collate.collate` pads with, so an
embedding with ``padding_idx=0`` ignores it), ``<unk>`` = 1, then the words by decreasing
count in the training captions, ties alphabetical — the same captions always give the same ids.
"""

import functools
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

from .errors import not_utf8

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_ASCII_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Scripts written without spaces between words: each character is a token (as BERT's basic
# tokenizer does for Han): Han ideographs (with 々 〆 〇), hiragana, katakana.
_CJK = re.compile("([\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                  "\uf900-\ufaff\U00020000-\U000323af])")


@functools.cache
def _unicode_word() -> re.Pattern:
    """Runs of letters, digits and combining marks of any script (the vowel signs of
    Devanagari are marks, not letters: without them "हिन्दी" would fall apart), with an inner
    apostrophe followed by letters."""
    marks, start = [], None
    for c in range(sys.maxunicode + 2):
        is_mark = c <= sys.maxunicode and unicodedata.category(chr(c))[0] == "M"
        if is_mark and start is None:
            start = c
        elif not is_mark and start is not None:
            marks.append(f"{chr(start)}-{chr(c - 1)}")
            start = None
    m = "".join(marks)
    return re.compile(rf"(?:[^\W_]|[{m}])+(?:'(?:[^\W\d_]|[{m}])+)?")


def tokenize(text: str) -> list[str]:
    """Lower-cased words: runs of letters/digits of any script, with an inner apostrophe
    ("man's"); punctuation is dropped. Plain English gives the tokens of the Karpathy JSON.

    Non-ASCII text is NFKC-normalised first (so "läuft" typed with a combining diaeresis is
    the same word, full-width "ＡＢＣ" is "abc"), ’ counts as an apostrophe, and each Han,
    hiragana or katakana character is one token ("一只狗" → 一, 只, 狗), since those scripts put
    no spaces between words. Other scripts written without spaces (Thai, Khmer, …) give one
    token per run: give such captions pre-tokenised (the Karpathy JSON's "tokens").
    """
    text = text.lower()
    if text.isascii():
        return _ASCII_WORD.findall(text)
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return _unicode_word().findall(_CJK.sub(r" \1 ", text))


def normalize_token(token: str) -> str:
    """A given token (a dataset's pre-tokenised "tokens") spelled as :func:`tokenize` spells
    its words — lower-cased, NFKC, ’ as apostrophe — so a new sentence tokenised at embedding
    time meets the vocabulary built from them. Tokens are not split further: a CJK dataset
    given as segmented words keeps its words (new sentences then need the same segmentation)."""
    token = token.lower()
    if token.isascii():
        return token
    return unicodedata.normalize("NFKC", token).lower().replace("\u2019", "'")


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
        try:
            with open(path, encoding="utf-8") as f:
                words = json.load(f)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        if not isinstance(words, list) or words[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a fusedembed vocabulary (a JSON list starting "
                             f"with {PAD!r}, {UNK!r})")
        return cls(words)
