"""The generator's datasets.

``generator_karpathy`` (registered ``alignment/generator_karpathy``): Flickr8k / Flickr30k /
MSCOCO from Karpathy's split JSON, with the paper's vocabulary (lower-cased words seen at least
``min_count`` = 5 times in the training captions, saved at ``vocab_path`` so the model sizes
itself from it), images resized to ``image_size`` and ImageNet-normalised.

``region_snippets`` (registered ``alignment/region_snippets``): the region generator's data,
one item per (region crop, snippet). Each region is an "image" of a caption dataset and its
snippets are that image's captions, so the generator, the caption evaluator and the
nearest-neighbour baseline use it unchanged. The snippets come from the alignment model: a
JSONL file ``snippets`` of ``{"image": i, "box": [x0, y0, x1, y1], "snippet": "..."}`` (image
index in the base split, box in its pixels), as the alignment plugin's MRF decoding writes
them. Without a file, on scenes, they are read off the data's word -> object truth (the
snippet an exact alignment would decode: each run of words describing one object, on that
object's box); that is what the demo uses.
"""

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from fusedembed import build, spec
from fusedembed.data import DataError, Vocab, karpathy, text_lines
from fusedembed.data.captions import CaptionDataset
from fusedembed.data.vocab import tokenize

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class Resize:
    """Float CHW image in [0, 1] -> ``size`` x ``size``, ImageNet-normalised when ``normalize``."""

    def __init__(self, size: int, normalize: bool = True):
        if size < 8:
            raise ValueError(f"image_size must be >= 8, got {size}")
        self.size, self.normalize = size, normalize

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [self.size, self.size], antialias=True)
        return (image - MEAN) / STD if self.normalize else image


def generator_karpathy(split: str, json_path: str, image_root: str, train_splits: str = "train",
                       min_count: int = 5, vocab_path: Optional[str] = None, image_size: int = 224,
                       view: str = "pair", captions_per_image: Optional[int] = None, skip_bad: bool = False):
    """Karpathy split JSON for the generator: vocabulary of words seen >= min_count times."""
    path = Path(vocab_path).expanduser() if vocab_path else None
    vocab = Vocab.load(path) if path is not None and path.is_file() else None
    # Without a vocabulary the reader builds one from the file's train + restval captions,
    # whatever split is asked for: every split gets the same one.
    ds = karpathy(json_path, image_root, split=train_splits if split == "train" else split, view=view,
                  vocab=vocab, min_count=min_count, captions_per_image=captions_per_image,
                  transform=Resize(image_size), skip_bad=skip_bad)
    if vocab is None and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.vocab.save(path)
    return ds


def truth_snippets(base) -> list[dict]:
    """Scenes' exact snippets: each run of consecutive words that describe one object, on the
    box of that object; one record per (image, caption, run)."""
    if not hasattr(base, "boxes") or not hasattr(base, "_word_objects"):
        raise ValueError("region_snippets: without a snippets file the base dataset must be scenes "
                         f"(it has the word -> object truth), got {type(base).__name__}")
    out = []
    for i in range(base.num_images):
        boxes = base.boxes(i).tolist()
        for j in base.captions_of(i):
            objs = base._word_objects[base._offsets[j]:base._offsets[j + 1]].tolist()
            toks = [base.vocab.itos[t] for t in base.tokens_of(j).tolist()]
            t = 0
            while t < len(objs):
                if objs[t] < 0:
                    t += 1
                    continue
                end = t
                while end < len(objs) and objs[end] == objs[t]:
                    end += 1
                out.append({"image": i, "box": boxes[objs[t]], "snippet": " ".join(toks[t:end])})
                t = end
    return out


def read_snippets(path) -> list[dict]:
    out = []
    for n, line in text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            box = [float(v) for v in rec["box"]]
            rec = {"image": int(rec["image"]), "box": box, "snippet": str(rec["snippet"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(path, f"line {n}", f"expected {{\"image\": int, \"box\": [x0, y0, x1, y1], "
                            f"\"snippet\": str}}, got {line.strip()[:80]!r} ({err})") from None
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(path, f"line {n}", f"box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {box}")
        out.append(rec)
    return out


def crop(image: torch.Tensor, box, size: int, margin: float = 0.1) -> torch.Tensor:
    """The box ``x0, y0, x1, y1`` (pixels) of a CHW image, grown by ``margin`` of its size on each
    side (clipped to the image), resized to ``size`` x ``size``: what the region generator sees."""
    from torchvision.transforms.v2 import functional as TF

    x0, y0, x1, y1 = (float(v) for v in box)
    H, W = image.shape[-2:]
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    a, b = max(int(x0 - mx), 0), min(int(round(x1 + mx)), W)
    c, d = max(int(y0 - my), 0), min(int(round(y1 + my)), H)
    return TF.resize(image[:, c:max(d, c + 1), a:max(b, a + 1)], [size, size], antialias=True)


class RegionSnippets(CaptionDataset):
    """Regions of a base caption dataset's images as "images" (crops resized to ``crop_size``),
    their snippets as captions. ``regions[r]`` = (base image, box); ``base`` is the dataset."""

    def __init__(self, base, records: list[dict], crop_size: int = 32, margin: float = 0.1,
                 transform: Optional[Callable] = None, vocab: Optional[Vocab] = None, view: str = "pair"):
        if crop_size < 4:
            raise ValueError(f"region_snippets: crop_size must be >= 4, got {crop_size}")
        grouped: dict = {}
        for rec in records:
            if not 0 <= rec["image"] < base.num_images:
                raise ValueError(f"region_snippets: image {rec['image']} is outside the base split's "
                                 f"{base.num_images} images")
            grouped.setdefault((rec["image"], tuple(round(v, 3) for v in rec["box"])), []).append(rec["snippet"])
        if not grouped:
            raise ValueError("region_snippets: no snippet to train or evaluate on")
        self.regions = list(grouped)
        captions = [grouped[r] for r in self.regions]
        super().__init__(captions, [[tokenize(c) for c in per] for per in captions],
                         vocab if vocab is not None else base.vocab, view, transform, base.seed)
        self.base, self.crop_size, self.margin = base, crop_size, margin

    def load_image(self, r: int) -> torch.Tensor:
        i, box = self.regions[r]
        return crop(self.base.load_image(i), box, self.crop_size, self.margin)

    def extra(self, r: int, c: int, with_image: bool) -> dict:
        i, box = self.regions[r]
        return {"base_image": i, "box": torch.tensor(box)} if with_image else {}


def region_snippets(split: str, base: spec("dataset"), snippets: Optional[str] = None, crop_size: int = 32,
                    margin: float = 0.1, view: str = "pair"):
    """Region crops with their snippets (from a snippets JSONL, or scenes' word -> object truth)."""
    base_ds = build("dataset", base, split=split)
    records = read_snippets(snippets) if snippets else truth_snippets(base_ds)
    return RegionSnippets(base_ds, records, crop_size, margin, view=view)
