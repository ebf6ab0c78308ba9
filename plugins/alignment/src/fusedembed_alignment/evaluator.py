"""Image <-> sentence retrieval by the alignment score S_kl (registered ``alignment/retrieval``).

Every image of the split is encoded once into its regions and every caption once into its
word vectors (model in eval mode); the (images x captions) S_kl matrix is computed in blocks
and ranked by :func:`fusedembed.metrics.score_retrieval_metrics`: i2t = rank of the best of
an image's captions, t2i = rank of the caption's image; R@1/5/10, median rank. COCO reports
the 1K figures (mean over 5 folds of 1000 images) and the 5K ones.
"""

from typing import Sequence

import torch
from torch.utils.data import DataLoader

from fusedembed.metrics import score_coco_retrieval, score_retrieval_metrics
from fusedembed.nn import eval_mode

from .score import DEFAULT_MAX_ELEMENTS, alignment_scores

PROTOCOLS = ("standard", "coco")


def _loader(dataset, like: DataLoader) -> DataLoader:
    return DataLoader(dataset, batch_size=like.batch_size, shuffle=False, collate_fn=like.collate_fn,
                      num_workers=like.num_workers)


def _pad_cat(parts: list, value=0) -> torch.Tensor:
    """Concatenates (n, L_i, ...) tensors along dim 0, padding dim 1 to the longest with ``value``."""
    size = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, size - p.shape[1]), value=value)
                      for p in parts])


def encode_images(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``regions`` (B, M, h) and ``num_regions`` (B,) of an image batch, on ``device``."""
    out = model({k: batch[k].to(device) for k in ("image", "boxes", "num_objects") if k in batch})
    return out["regions"], out["num_regions"]


def encode_texts(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``words`` (C, T, h) and ``lengths`` (C,) of a caption batch, on ``device``."""
    out = model({"tokens": batch["tokens"].to(device), "lengths": batch["lengths"].to(device)})
    return out["words"], out["lengths"]


@torch.no_grad()
def encode(model, loader: DataLoader, *, device, keep_image=(), keep_text=()) -> dict:
    """``regions`` (N, M, h), ``num_regions`` (N,), ``words`` (C, T, h), ``lengths`` (C,) and
    ``caption_to_image`` (C,) of the loader's caption dataset, on the CPU; plus the batch
    fields named in ``keep_image`` (of the images) and ``keep_text`` (of the captions), padded
    with -1 (the scenes' ``object_groups``, ``word_objects``)."""
    dataset = loader.dataset
    if not hasattr(dataset, "with_view") or not hasattr(dataset, "caption_to_image"):
        raise TypeError(f"alignment/retrieval: needs a caption dataset (with_view, caption_to_image), got "
                        f"{type(dataset).__name__}")
    regions, counts, words, lengths = [], [], [], []
    kept = {k: [] for k in (*keep_image, *keep_text)}
    with eval_mode(model):
        for b in _loader(dataset.with_view("image"), loader):
            v, n = encode_images(model, b, device)
            regions.append(v.float().cpu())
            counts.append(n.cpu())
            for k in keep_image:
                if k in b:
                    kept[k].append(b[k])
        for b in _loader(dataset.with_view("text"), loader):
            s, n = encode_texts(model, b, device)
            words.append(s.float().cpu())
            lengths.append(n.cpu())
            for k in keep_text:
                if k in b:
                    kept[k].append(b[k])
    missing = [k for k, v in kept.items() if not v]
    if missing:
        raise KeyError(f"alignment encode: the dataset's items have no {', '.join(missing)}")
    return {"regions": _pad_cat(regions), "num_regions": torch.cat(counts),
            "words": _pad_cat(words), "lengths": torch.cat(lengths),
            "caption_to_image": dataset.caption_to_image.clone(),
            **{k: _pad_cat(v, -1) if v[0].dim() > 1 else torch.cat(v) for k, v in kept.items()}}


class RetrievalEvaluator:
    """R@K and median rank of S_kl retrieval, image->text and text->image.

    Args:
      protocol: "standard" (the whole split) or "coco" (``1k_*`` over ``folds`` folds and ``5k_*``).
      ks: the K of R@K.
      median: "floor" (the usual) or "recall" (see fusedembed.metrics.recall_summary).
      ties: "pessimistic" or "optimistic".
      max_elements: dot products held at once while scoring (memory bound).
    """

    def __init__(self, protocol: str = "standard", ks: Sequence[int] = (1, 5, 10), median: str = "floor",
                 ties: str = "pessimistic", folds: int = 5, max_elements: int = DEFAULT_MAX_ELEMENTS):
        if protocol not in PROTOCOLS:
            raise ValueError(f"alignment/retrieval: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol, self.ks, self.median, self.ties = protocol, tuple(ks), median, ties
        self.folds, self.max_elements = int(folds), int(max_elements)

    def scores(self, enc: dict, device="cpu") -> torch.Tensor:
        return alignment_scores(enc["regions"].to(device), enc["words"].to(device), enc["num_regions"].to(device),
                                enc["lengths"].to(device), self.max_elements).cpu()

    def metrics(self, scores: torch.Tensor, caption_to_image: torch.Tensor) -> dict:
        if self.protocol == "coco":
            return score_coco_retrieval(scores, caption_to_image, self.folds, self.ks, self.ties, self.median)
        return score_retrieval_metrics(scores, caption_to_image, self.ks, self.ties, self.median)

    def __call__(self, model, loader, *, device) -> dict:
        enc = encode(model, loader, device=device)
        return self.metrics(self.scores(enc, device), enc["caption_to_image"])
