"""Image ↔ text retrieval evaluation (registered evaluator ``dualpath/retrieval``).

The evaluator gets the loader of a caption dataset (any view: scenes, Karpathy, CUHK-PEDES),
encodes each image once and each caption once through the model's test-time path (flip sum,
position-shift sum, L2 norm) and scores them with :mod:`fusedembed.metrics.retrieval`:
R@1/5/10, median rank and rsum in both directions, and what the authors' ``evaluate.m`` prints
besides: ``*_map`` (mAP, their trapezoid AP: every caption of the image relevant for i2t) and
``*_medr_authors`` (their Med r: the first K with mean CMC > 0.5, next to ``*_medr``, the VSE++
floor of the median); COCO adds the 1K (5 folds) and 5K figures;
CUHK-PEDES is scored by identity (a text query succeeds when any image of the person ranks
in the top K, the protocol of Li et al. that the dual-path paper reports).

Images may differ in size (the authors' test images keep their aspect, short side 256): each
loader batch is split by image size and each size encoded as its own batch, since padding
to one size would change the features the model sums over space.
"""

from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from fusedembed.data import by_image_size
from fusedembed.distributed import gather_batch, shard_range
from fusedembed.metrics import coco_retrieval, instance_map, retrieval_metrics
from fusedembed.metrics.retrieval import recall_summary, retrieval_ranks
from fusedembed.nn import eval_mode

PROTOCOLS = ("standard", "coco", "identity")


class BySize:
    """Collate of image items: ``[(positions in the batch, collated batch)]``, one per image size."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list) -> list:
        return [(torch.tensor(ks), self.collate([items[k] for k in ks])) for ks in by_image_size(items)]


def _loader(dataset, like: DataLoader, collate=None) -> DataLoader:
    # under DDP this rank's shard; encode gathers the shards back in order
    shard = Subset(dataset, shard_range(len(dataset)))
    return DataLoader(shard, batch_size=like.batch_size, shuffle=False, collate_fn=collate or like.collate_fn,
                      num_workers=like.num_workers)


def _encode_images(model, loader: DataLoader, device) -> torch.Tensor:
    """The image embeddings of a :class:`BySize` loader, in the dataset's order."""
    out = []
    for groups in loader:
        parts = [(ks, model({"image": b["image"].to(device)})["image_embedding"].float().cpu()) for ks, b in groups]
        batch = parts[0][1].new_empty(sum(len(ks) for ks, _ in parts), parts[0][1].shape[1])
        for ks, emb in parts:
            batch[ks] = emb
        out.append(batch)
    return torch.cat(out)


@torch.no_grad()
def encode(model, loader: DataLoader, *, device) -> tuple:
    """``(image embeddings (N, D), caption embeddings (M, D), caption_to_image (M,))`` of the
    loader's caption dataset, in the model's eval mode."""
    dataset = loader.dataset
    if not hasattr(dataset, "with_view") or not hasattr(dataset, "caption_to_image"):
        raise TypeError(f"dualpath/retrieval: needs a caption dataset (with_view, caption_to_image), got "
                        f"{type(dataset).__name__}")
    with eval_mode(model):
        images = _encode_images(model, _loader(dataset.with_view("image"), loader, BySize(loader.collate_fn)), device)
        texts = [model({"tokens": b["tokens"].to(device), "lengths": b["lengths"].to(device)})
                 ["text_embedding"].float().cpu() for b in _loader(dataset.with_view("text"), loader)]
    return gather_batch(images), gather_batch(torch.cat(texts)), dataset.caption_to_image.clone()


def authors_figures(img, txt, txt_to_img, ks=(1, 5, 10), ties: str = "pessimistic", image_labels=None) -> dict:
    """``i2t_map``, ``t2i_map`` (percent) and ``i2t_medr_authors``, ``t2i_medr_authors``. With
    ``image_labels`` (person search) an item is relevant when its identity matches."""
    g = torch.as_tensor(txt_to_img).long()
    image_ids = torch.arange(len(img)) if image_labels is None else torch.as_tensor(image_labels).long()
    caption_ids = image_ids[g]
    i2t, t2i = retrieval_ranks(img, txt, g, ties, image_labels=image_labels)
    out = {}
    for d, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{d}_medr_authors"] = recall_summary(ranks, ks, "recall")["medr"]
    out["i2t_map"] = instance_map(img, txt, image_ids, caption_ids, ties=ties)["map"]
    out["t2i_map"] = instance_map(txt, img, caption_ids, image_ids, ties=ties)["map"]
    return out


class RetrievalEvaluator:
    """R@K, median rank and rsum, image→text and text→image.

    Args:
      protocol: "standard" (the whole split), "coco" (``1k_*``: mean over 5 folds of 1000
        images; ``5k_*``: the whole 5000) or "identity" (person search: a caption matches
        every image of its person and an image every caption of its person; the dataset must
        give per-image ``identities``, as ``dualpath/cuhk_pedes`` does).
      ks: the K of R@K.
      median: ``*_medr``: "floor" (VSE++) or "recall" (the authors' first K with R@K > 50 %,
        which ``*_medr_authors`` always gives).
      ties: "pessimistic" or "optimistic" (see fusedembed.metrics).
    """

    distributed = True      # under DDP every rank encodes its shard (encode gathers)

    def __init__(self, protocol: str = "standard", ks: Sequence[int] = (1, 5, 10), median: str = "floor",
                 ties: str = "pessimistic", folds: int = 5):
        if protocol not in PROTOCOLS:
            raise ValueError(f"dualpath/retrieval: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol, self.ks, self.median, self.ties, self.folds = protocol, tuple(ks), median, ties, folds

    def metrics(self, img: torch.Tensor, txt: torch.Tensor, txt_to_img: torch.Tensor,
                image_labels: Optional[torch.Tensor] = None) -> dict:
        if self.protocol == "coco":
            out = coco_retrieval(img, txt, txt_to_img, self.folds, self.ks, self.ties, self.median)
            g, size = torch.as_tensor(txt_to_img).long(), len(img) // self.folds
            folds = []
            for f in range(self.folds):
                sel = ((g >= f * size) & (g < (f + 1) * size)).nonzero().reshape(-1)
                folds.append(authors_figures(img[f * size:(f + 1) * size], txt[sel], g[sel] - f * size, self.ks,
                                             self.ties))
            out |= {f"1k_{k}": sum(m[k] for m in folds) / self.folds for k in folds[0]}
            return out | {f"5k_{k}": v for k, v in authors_figures(img, txt, g, self.ks, self.ties).items()}
        if self.protocol == "identity" and image_labels is None:
            raise ValueError("dualpath/retrieval: protocol 'identity' needs the images' identities")
        labels = image_labels if self.protocol == "identity" else None
        return (retrieval_metrics(img, txt, txt_to_img, self.ks, self.ties, self.median, image_labels=labels)
                | authors_figures(img, txt, txt_to_img, self.ks, self.ties, labels))

    def __call__(self, model, loader, *, device) -> dict:
        labels = None
        if self.protocol == "identity":
            labels = getattr(loader.dataset, "identities", None)
            if labels is None:  # before the encoding, which can take a while
                raise TypeError(f"dualpath/retrieval: protocol 'identity' needs a dataset with per-image "
                                f"identities (dualpath/cuhk_pedes), got {type(loader.dataset).__name__}")
        return self.metrics(*encode(model, loader, device=device), image_labels=labels)
