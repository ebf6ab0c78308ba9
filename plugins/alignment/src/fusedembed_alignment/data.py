"""Datasets with region boxes for the alignment model (registered ``alignment/karpathy_boxes``).

The paper's regions are the top 19 RCNN detections of each image; here they come from a
detections file the user provides, one entry per image file name (the Karpathy JSON's
``filename``):

- JSON: ``{"<filename>": [[x0, y0, x1, y1], ...], ...}``, or rows ``[x0, y0, x1, y1, score]``;
- npz: one array per file name, shape (K, 4) or (K, 5), same columns.

Coordinates are pixels of the original image. With a score column the boxes are sorted by it,
best first; without one they are used in the file's order; the model keeps the first
``max_boxes``. Images are resized to ``image_size`` x ``image_size`` (no crop, so the boxes
scale with it) and normalised with the ImageNet mean and std.

The scenes data needs no file: the core ``scenes`` dataset's items already hold the boxes of
their objects (and ``word_objects``, the truth the alignment metrics score against).
"""

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from fusedembed.data import DataError, Vocab, karpathy, read_json

MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def _rows(value, path, name) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(path, name, "boxes must be a list of [x0, y0, x1, y1(, score)] rows") from None
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise DataError(path, name, f"boxes must be (K, 4) or (K, 5), got shape {list(arr.shape)}")
    if not np.isfinite(arr).all() or (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise DataError(path, name, "boxes must be finite with x1 >= x0 and y1 >= y0")
    if arr.shape[1] == 5:
        arr = arr[np.argsort(-arr[:, 4], kind="stable"), :4]
    return arr


def read_detections(path) -> dict:
    """``{filename: float32 (K, 4) boxes}`` from a JSON or npz detections file (see the module)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"alignment/karpathy_boxes: detections {str(path)!r} is not a file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {name: _rows(z[name], path, name) for name in z.files}
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(path, None, f"expected an object {{filename: boxes}}, got {type(doc).__name__}")
    return {name: _rows(v, path, name) for name, v in doc.items()}


class BoxedCaptions(torch.utils.data.Dataset):
    """A caption dataset whose image items also hold ``boxes`` (K, 4) in the resized image."""

    def __init__(self, base, detections: dict, image_size: int):
        self.base, self.detections, self.image_size = base, detections, int(image_size)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):      # vocab, caption_to_image, tokenize, set_epoch, ...
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def with_view(self, view: str) -> "BoxedCaptions":
        return BoxedCaptions(self.base.with_view(view), self.detections, self.image_size)

    def boxes(self, i: int) -> torch.Tensor:
        """(K, 4) boxes of image i in pixels of the image file (as ``scenes`` gives its own): the
        region generator crops them from the original image."""
        return torch.from_numpy(self.detections[Path(self.base.paths[i]).name])

    @property
    def file_transform(self):
        return self._prepare

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        return (image - MEAN) / STD

    def __getitem__(self, idx: int) -> dict:
        item = self.base[idx]
        if "image" in item:
            H, W = item["image"].shape[1:]
            boxes = torch.from_numpy(self.detections[Path(item["path"]).name])
            scale = torch.tensor([self.image_size / W, self.image_size / H] * 2)
            item["image"] = self._prepare(item["image"])
            item["boxes"] = boxes * scale
        return item


def karpathy_boxes(split: str = "train", json_path: str = "", image_root: str = "",
                   detections: str = "", image_size: int = 224, view: str = "image",
                   min_count: int = 5, captions_per_image: Optional[int] = 5, seed: int = 0,
                   skip_bad: bool = False, vocab_path: Optional[str] = None,
                   json_split: Optional[str] = None) -> BoxedCaptions:
    """Flickr8k / Flickr30k / COCO from the Karpathy split JSON, with boxes from a detections
    file. Words are lower-cased; the vocabulary is the training words seen ``min_count`` times
    (the paper: 5), or the one in ``vocab_path`` (``python -m fusedembed_alignment vocab``
    writes it; the model reads the same file for its word vectors). ``json_split``: the JSON's
    split(s) to read instead of the trainer's (COCO trains on "train+restval")."""
    for name, value in (("json_path", json_path), ("image_root", image_root), ("detections", detections)):
        if not value:
            raise ValueError(f"alignment/karpathy_boxes: {name} is required (a local path), got {value!r}")
    if image_size < 1:
        raise ValueError(f"alignment/karpathy_boxes: image_size must be >= 1, got {image_size}")
    vocab = Vocab.load(vocab_path) if vocab_path else None
    base = karpathy(json_path, image_root, split=json_split or split, view=view, vocab=vocab, min_count=min_count,
                    captions_per_image=captions_per_image, skip_bad=skip_bad, seed=seed)
    dets = read_detections(detections)
    missing = [p for p in base.paths if Path(p).name not in dets]
    if missing:
        raise DataError(detections, None, f"no boxes for {len(missing)} of the split's {len(base.paths)} "
                        f"images, e.g. {Path(missing[0]).name!r} (give an empty list for an image "
                        f"without detections)")
    return BoxedCaptions(base, dets, image_size)
