"""Batching of the item dicts (see :mod:`fusedembed.data` for the keys).

``collate(batch, pad_to=None)``:

* ``tokens`` (T,) → (B, L) LongTensor padded with ``<pad>``=0, plus ``lengths`` (B,) — the
  true lengths, clipped to L. L is the longest caption, or ``pad_to`` when given (captions
  longer than ``pad_to`` are truncated: the Dual-Path TextCNN wants a fixed window of 32).
* ``word_objects`` (T,) → (B, L) padded with −1, truncated like ``tokens``.
* ``boxes`` (K, 4) → (B, Kmax, 4) padded with 0, plus ``num_objects`` (B,); ``objects`` and
  ``object_groups`` padded with −1.
* other tensors of equal shape are stacked (``image``, ``labels``); ints/floats become
  tensors; anything else (``caption``, ``path``, ``words``) stays a list.

``by_image_size(items)``: the positions of the items grouped by their ``image`` shape, for
batches of images kept at their own size (padding would change what a pooled net computes).
"""

import torch

from .vocab import PAD_ID

SEQ_PAD = {"tokens": PAD_ID, "word_objects": -1}
OBJ_PAD = {"boxes": 0.0, "objects": -1, "object_groups": -1}


def by_image_size(items: list) -> list:
    """``[[positions], ...]``: one list per distinct ``item["image"].shape``, in first-seen
    order; items without an image form one group."""
    groups: dict = {}
    for k, item in enumerate(items):
        image = item.get("image")
        groups.setdefault(tuple(image.shape) if isinstance(image, torch.Tensor) else None, []).append(k)
    return list(groups.values())


def _pad(seqs, length, value):
    out = torch.full((len(seqs), length, *seqs[0].shape[1:]), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        n = min(len(s), length)
        out[i, :n] = s[:n]
    return out


def collate(batch: list[dict], pad_to: int | None = None) -> dict:
    if not batch:
        raise ValueError("collate: empty batch")
    keys = batch[0].keys()
    for i, item in enumerate(batch):
        if item.keys() != keys:
            raise ValueError(f"collate: item {i} has keys {sorted(item)} but item 0 has "
                             f"{sorted(keys)} (mixing dataset views?)")
    out = {}
    if "tokens" in keys:
        true_len = torch.tensor([len(b["tokens"]) for b in batch], dtype=torch.long)
        length = pad_to if pad_to is not None else max(int(true_len.max()), 1)
        if length < 1:
            raise ValueError(f"collate: pad_to must be >= 1, got {pad_to}")
        out["lengths"] = true_len.clamp(max=length)
    if "boxes" in keys:
        out["num_objects"] = torch.tensor([len(b["boxes"]) for b in batch], dtype=torch.long)
    for key in keys:
        values = [b[key] for b in batch]
        if key in SEQ_PAD:
            out[key] = _pad(values, length, SEQ_PAD[key])
        elif key in OBJ_PAD:
            out[key] = _pad(values, max(int(out["num_objects"].max()), 1)
                            if "num_objects" in out else max(len(v) for v in values), OBJ_PAD[key])
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: '{key}' has different shapes in one batch "
                                 f"{sorted(shapes)}; resize images in the dataset transform")
            out[key] = torch.stack(values)
        elif isinstance(values[0], bool) or not isinstance(values[0], (int, float)):
            out[key] = values
        else:
            out[key] = torch.tensor(values, dtype=torch.long if isinstance(values[0], int)
                                    else torch.float32)
    return out
