"""Base class of the image–caption datasets: images with several captions each, seen
through one of three views (see :mod:`fusedembed.data` for the item keys)."""

import warnings
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .vocab import Vocab
from .vocab import tokenize as split_words

VIEWS = ("image", "pair", "text")


def _mix(*values: int) -> int:
    """splitmix64 over the values: a cheap, stateless, portable hash (worker-safe)."""
    h = 0
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


class CaptionDataset(Dataset):
    """Images ``0..N-1``, each with ≥ 1 captions; captions are numbered ``0..M-1`` image by
    image (``caption_to_image[j]`` is caption j's image).

    Views:
      * ``"image"`` — N items, one per image, with ONE caption: drawn per (seed, epoch,
        image) — call :meth:`set_epoch` each epoch; a stateless hash, so DataLoader workers
        and resumed runs draw the same. For training with each image as its class and for
        image embeddings at evaluation.
      * ``"pair"`` — M items, every (image, caption) pair, image-major order.
      * ``"text"`` — M items like "pair" without the image (text embeddings at evaluation).

    A caption with no token (``""``, ``"!!!"``) is kept — an empty token sequence, so that
    caption numbering and per-image counts (COCO's 5) stay as in the file — and reported once,
    by a warning at construction naming how many and the first ids (``empty_captions`` lists
    them all); a dataset where no caption has a token is an error.

    Subclasses implement :meth:`load_image` and may add keys with :meth:`extra`.
    """

    def __init__(self, captions: Sequence[Sequence[str]],
                 tokens: Sequence[Sequence[Sequence[str]]], vocab: Vocab, view: str = "pair",
                 transform: Callable | None = None, seed: int = 0, name: str | None = None):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if len(captions) != len(tokens):
            raise ValueError("captions and tokens differ in length")
        self.view, self.transform, self.vocab = view, transform, vocab
        self.seed, self.epoch = seed, 0
        counts = [len(c) for c in captions]
        for i, n in enumerate(counts):
            if n == 0 or len(tokens[i]) != n:
                raise ValueError(f"image {i}: {n} captions, {len(tokens[i])} token lists")
        # Flat storage (M strings, one id tensor + offsets): few Python objects, so forked
        # DataLoader workers do not copy pages by touching reference counts.
        self.texts = [t for per in captions for t in per]
        ids = [vocab.encode(t) for per in tokens for t in per]
        self._ids = torch.tensor([w for seq in ids for w in seq], dtype=torch.long)
        self._offsets = torch.cumsum(torch.tensor([0] + [len(s) for s in ids]), 0)
        self.empty_captions = [j for j, seq in enumerate(ids) if not seq]
        self._report_empty(name or type(self).__name__)
        self.caption_to_image = torch.repeat_interleave(
            torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
        self._first_caption = torch.cumsum(torch.tensor([0] + counts), 0)

    def _report_empty(self, name: str) -> None:
        n, total = len(self.empty_captions), len(self.texts)
        if not n:
            return
        first = ", ".join(f"{j} {self.texts[j]!r}" for j in self.empty_captions[:5])
        if n == total:
            raise ValueError(f"{name}: none of the {total} captions has a token (first: {first}); "
                             "nothing to train the text side on")
        warnings.warn(f"{name}: {n} of {total} captions have no token (caption ids "
                      f"{first}{', …' if n > 5 else ''}); kept as empty token sequences — the "
                      "text model sees only padding for them", RuntimeWarning, stacklevel=3)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self._first_caption) - 1

    @property
    def num_captions(self) -> int:
        return len(self.caption_to_image)

    def __len__(self) -> int:
        return self.num_images if self.view == "image" else self.num_captions

    def with_view(self, view: str) -> "CaptionDataset":
        """The same data seen through another view (shares everything but the view)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.view = view
        return other

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- items ------------------------------------------------------------------------------
    def load_image(self, i: int) -> torch.Tensor:
        """Image i as a float CHW tensor in [0, 1]."""
        raise NotImplementedError

    def extra(self, i: int, c: int, with_image: bool) -> dict:
        """Dataset-specific keys for image i, its caption c."""
        return {}

    def tokenize(self, text: str) -> torch.Tensor:
        """Token ids (T,) of a new sentence, as this dataset's items would hold it (so a trained
        model can embed sentences it never saw: ``fusedembed embed`` / ``search``)."""
        return torch.tensor(self.vocab.encode(split_words(text)), dtype=torch.long)

    def captions_of(self, i: int) -> range:
        """Global ids of image i's captions."""
        return range(int(self._first_caption[i]), int(self._first_caption[i + 1]))

    def tokens_of(self, j: int) -> torch.Tensor:
        # A copy: a view would drag the whole id storage into shared memory when a DataLoader
        # worker sends the item.
        return self._ids[int(self._offsets[j]):int(self._offsets[j + 1])].clone()

    def _pick_caption(self, i: int) -> int:
        return _mix(self.seed, self.epoch, i) % len(self.captions_of(i))

    def __getitem__(self, idx: int) -> dict:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} items")
        idx %= n
        if self.view == "image":
            i, c = idx, self._pick_caption(idx)
        else:
            i = int(self.caption_to_image[idx])
            c = idx - int(self._first_caption[i])
        item = {}
        if self.view != "text":
            image = self.load_image(i)
            item["image"] = self.transform(image) if self.transform is not None else image
        j = int(self._first_caption[i]) + c
        item.update(instance=i, caption_id=j, caption_index=c, caption=self.texts[j],
                    tokens=self.tokens_of(j))
        item.update(self.extra(i, c, self.view != "text"))
        return item
