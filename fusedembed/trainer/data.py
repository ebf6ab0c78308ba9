"""Loaders whose order is a function of (seed, epoch) alone, so a resumed run sees the batches
an uninterrupted one would, and DDP ranks together see the batches one process would. The
train batches are lists of keys ``(epoch, position, index)``: :class:`~.rng.SeededItems`
seeds each item's random augmentation from its position in the epoch."""

import itertools

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import UsageError
from .rng import SeededItems


class GlobalBatchSampler(Sampler):
    """Batches of one rank: global batch i of a seeded per-epoch permutation is split in
    ``world`` contiguous slices and rank r takes slice r (the incomplete last global batch is
    dropped). ``start`` skips the first global batches (resuming mid-epoch)."""

    def __init__(self, n: int, global_batch: int, *, seed: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True):
        if global_batch % world:
            raise UsageError(f"trainer.batch_size ({global_batch}) must be divisible by the number of "
                             f"processes ({world})")
        if n < global_batch:
            raise UsageError(f"the train set has {n} items, fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.shuffle, self.epoch, self.start = shuffle, 0, 0
        self.local = global_batch // world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self):
        return self.n // self.global_batch - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for b in range(self.start, self.n // self.global_batch):
            lo = b * self.global_batch + self.rank * self.local
            # the position in the global stream: one process and N ranks give an item one seed
            yield [(self.epoch, lo + j, i) for j, i in enumerate(order[lo:lo + self.local])]


class SkipBatches(Sampler):
    """A recipe's batch sampler with the first ``start`` batches of the epoch skipped, its
    batches keyed by (epoch, batch, rank, slot) for the items' seeds."""

    def __init__(self, sampler, rank: int = 0, world: int = 1):
        self.sampler, self.start, self.epoch, self.rank, self.world = sampler, 0, 0, rank, world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self):
        return len(self.sampler) - self.start

    def __iter__(self):
        for b, batch in enumerate(itertools.islice(iter(self.sampler), self.start, None), start=self.start):
            base = (b * self.world + self.rank) * len(batch)
            yield [(self.epoch, base + j, int(i)) for j, i in enumerate(batch)]


def collate_of(dataset):
    """The dataset's own ``collate``, else fusedembed's: default_collate plus padding of the
    variable-length fields of the item vocabulary (tokens, boxes)."""
    from ..data import collate
    return getattr(dataset, "collate", None) or collate


def train_loader(dataset, recipe, world, sampler_cfg=None) -> DataLoader:
    cfg = recipe.trainer
    if sampler_cfg is not None:
        from ..plugins import build, get_registry
        entry = get_registry("sampler").get(sampler_cfg["name"] if isinstance(sampler_cfg, dict) else sampler_cfg)
        extra = {}
        if world.distributed and entry.accepted is not None and {"num_replicas", "rank"} <= set(entry.accepted):
            extra = {"num_replicas": world.size, "rank": world.rank}
        sampler = build("sampler", sampler_cfg, dataset=dataset, **extra)
        if not getattr(sampler, "yields_batches", False):
            raise ValueError(f"data.sampler {sampler_cfg!r} must yield whole batches "
                             f"(yields_batches = True); per-item order comes from the trainer")
        batch_sampler = SkipBatches(sampler, world.rank, world.size)
    else:
        batch_sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed,
                                           rank=world.rank, world=world.size)
    # Its own generator: starting an epoch's iterator draws a seed, never from the global RNG.
    return DataLoader(SeededItems(dataset, cfg.seed), batch_sampler=batch_sampler,
                      collate_fn=collate_of(dataset), num_workers=cfg.workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=cfg.workers > 0,
                      generator=torch.Generator().manual_seed(cfg.seed))


def eval_loader(dataset, recipe) -> DataLoader:
    cfg = recipe.trainer
    return DataLoader(dataset, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                      collate_fn=collate_of(dataset), num_workers=cfg.workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(cfg.seed))


def to_device(batch: dict, device, channels_last: bool = False) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out
