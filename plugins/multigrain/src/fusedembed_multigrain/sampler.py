"""Repeated augmentation (``lib/samplers.py::RASampler``): each image of a shuffled epoch
appears ``repeats`` (m = 3) times in a row, so one batch holds its copies under different
augmentations and the margin loss has positives; an epoch is ``epoch_len_factor`` (2.0) x N
samples, cut into batches.

Under DDP (``num_replicas`` > 1):

- ``spread="rank"`` (default): the global batch is cut into per-rank batches along the
  stream, at multiples of m, so every copy of an image is on one rank (the margin loss needs
  them together; the release ran DataParallel, where a 512 / 8 = 64 chunk split some groups).
- ``spread="deit"``: DeiT/timm's RASampler: the repeated stream is dealt round-robin,
  ``indices[rank::num_replicas]``, so the copies go to different ranks; the margin loss then
  needs its global sampling (the default of ``multigrain/margin``).
"""

import math
from typing import Iterator, List

import torch
from torch.utils.data import Sampler

SPREADS = ("rank", "deit")


class RepeatedAugmentationSampler(Sampler[List[int]]):
    """Yields the batches (index lists) of this rank; ``set_epoch`` reshuffles. ``batch_size``
    is the global batch (512), split evenly over the processes."""

    yields_batches = True

    def __init__(self, dataset, batch_size: int = 512, repeats: int = 3, epoch_len_factor: float = 2.0,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, spread: str = "rank",
                 drop_last: bool = True):
        n = len(dataset) if not isinstance(dataset, int) else dataset
        if n < 1:
            raise ValueError("RepeatedAugmentationSampler: the dataset is empty")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"RepeatedAugmentationSampler: repeats must be an int >= 1, got {repeats!r}")
        if batch_size < 1:
            raise ValueError(f"RepeatedAugmentationSampler: batch_size must be >= 1, got {batch_size}")
        if not epoch_len_factor > 0:
            raise ValueError(f"RepeatedAugmentationSampler: epoch_len_factor must be > 0, got {epoch_len_factor}")
        if spread not in SPREADS:
            raise ValueError(f"RepeatedAugmentationSampler: spread must be one of {SPREADS}, got {spread!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"RepeatedAugmentationSampler: rank must be in [0, {num_replicas}), got {rank}")
        if batch_size % num_replicas:
            raise ValueError(f"RepeatedAugmentationSampler: batch_size ({batch_size}, global) must be a multiple "
                             f"of num_replicas ({num_replicas})")
        local = batch_size // num_replicas
        if spread == "rank" and local % repeats:
            raise ValueError(f"RepeatedAugmentationSampler: the per-process batch ({local}) must be a multiple of "
                             f"repeats ({repeats}) so that an image's copies stay in one batch")
        self.n, self.batch_size, self.repeats = n, local, repeats
        self.epoch_len = int(math.ceil(epoch_len_factor * n))          # samples per epoch, all ranks
        self.local_len = self.epoch_len // num_replicas
        self.seed, self.num_replicas, self.rank, self.spread = seed, num_replicas, rank, spread
        self.drop_last, self.epoch = drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self) -> torch.Tensor:
        """The epoch's repeated indices, long enough for every rank."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        unique = math.ceil(self.epoch_len / self.repeats)
        perms = [torch.randperm(self.n, generator=g) for _ in range(math.ceil(unique / self.n))]
        return torch.cat(perms)[:unique].repeat_interleave(self.repeats)

    def _local(self) -> torch.Tensor:
        stream = self._stream()
        if self.num_replicas == 1:
            return stream[:self.epoch_len]
        if self.spread == "deit":
            return stream[self.rank::self.num_replicas][:self.local_len]
        b = self.batch_size           # rank r takes batch r of every group of num_replicas batches
        blocks = stream[:len(stream) // b * b].view(-1, b)
        return blocks[self.rank::self.num_replicas].reshape(-1)[:self.local_len]

    def __iter__(self) -> Iterator[List[int]]:
        local = self._local().tolist()
        for i in range(len(self)):
            yield local[i * self.batch_size:(i + 1) * self.batch_size]

    def __len__(self) -> int:
        n = self.local_len
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
