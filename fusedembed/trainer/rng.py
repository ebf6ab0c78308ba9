"""Every random stream a training step draws from, saved and restored, and the per-item seeds
that make a dataset's random augmentations a function of (seed, epoch, position) alone.

The global generators (Python, NumPy, torch CPU and CUDA) feed dropout, random shifts and the
like in the main process, and with ``workers=0`` the dataset's random augmentation too; they
are checkpointed and restored after every object that draws at construction is built. In a
DataLoader worker, a dataset's ``__getitem__`` runs under a seed derived from the item's place
in the epoch (:class:`SeededItems`), so the number of workers, their prefetching and a resume
mid-epoch never change what an item draws.
"""

import random
from typing import List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

MASK64 = (1 << 64) - 1


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain types."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def mix(*values: int) -> int:
    """A 64-bit seed from integers (splitmix64 over each in turn): cheap, and nearby inputs
    give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 31
    return h


# One item of a keyed batch: (epoch, position of the item in the epoch's global stream, index).
Key = Tuple[int, int, int]


class SeededItems(Dataset):
    """``dataset`` fetched by keys ``(epoch, position, index)``. In a worker process each item
    is made under the Python, NumPy and torch CPU generators seeded from ``(seed, epoch,
    position)`` (a worker's own streams would depend on which batches it was dealt). In the
    main process the item draws from the global generators, which the checkpoint holds, at no
    cost per item. ``set_epoch`` reaches the dataset in every worker, persistent ones included."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key: Key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: List[Key]) -> list:
        in_worker = torch.utils.data.get_worker_info() is not None
        items = []
        for epoch, position, index in keys:
            if epoch != self.epoch:
                if callable(getattr(self.dataset, "set_epoch", None)):
                    self.dataset.set_epoch(epoch)
                self.epoch = epoch
            if in_worker:
                s = mix(self.seed, epoch, position)
                random.seed(s)
                np.random.seed(s >> 32)
                torch.default_generator.manual_seed(s)
            items.append(self.dataset[index])
        return items
