"""Caption evaluation (registered evaluator ``alignment/captions``): the model describes every
image of the split (greedy or beam search) and its sentences are scored against all of that
image's reference captions with BLEU-1..4, ROUGE-L, CIDEr-D and, when it can run, METEOR
(:mod:`.metrics`).

The loader may be any view of a caption dataset: each image (``instance``) is described once,
and its references are every caption the dataset holds for it (``dataset.texts`` grouped by
``dataset.caption_to_image``).
"""

import warnings
from typing import Dict, List

import torch

from fusedembed.nn import eval_mode

from .metrics import caption_scores


def references(dataset) -> Dict[int, List[str]]:
    """Image index -> its reference captions (raw text)."""
    refs: Dict[int, List[str]] = {}
    for j, i in enumerate(dataset.caption_to_image.tolist()):
        refs.setdefault(i, []).append(dataset.texts[j])
    return refs


def words(vocab, ids: torch.Tensor, length: int) -> str:
    return " ".join(vocab.decode(ids[:length].tolist()))


@torch.no_grad()
def describe(model, loader, *, device, beam_size: int = 1, max_len: int = 20,
             length_norm: float = 0.0) -> Dict[int, str]:
    """Image index -> the model's sentence for it, for every image the loader holds."""
    vocab = loader.dataset.vocab
    out: Dict[int, str] = {}
    with eval_mode(model):
        for batch in loader:
            inst = batch["instance"].tolist()
            fresh = [k for k, i in enumerate(inst) if i not in out and inst.index(i) == k]
            if not fresh:
                continue
            images = batch["image"][fresh].to(device, non_blocking=True)
            ids, lengths, _ = model.generate(images, beam_size=beam_size, max_len=max_len,
                                             length_norm=length_norm)
            ids, lengths = ids.cpu(), lengths.cpu()
            for r, k in enumerate(fresh):
                out[inst[k]] = words(vocab, ids[r], int(lengths[r]))
    return out


@torch.no_grad()
def describe_boxes(model, image: torch.Tensor, boxes, vocab, *, crop_size: int = 32, margin: float = 0.1,
                   beam_size: int = 1, max_len: int = 20, device=None) -> List[str]:
    """The region generator's sentence for each box ``x0, y0, x1, y1`` (pixels) of a CHW image
    in [0, 1], cropped as :class:`~.datasets.RegionSnippets` crops its training regions."""
    from .datasets import crop

    if len(boxes) == 0:
        return []
    device = device if device is not None else next(model.parameters()).device
    crops = torch.stack([crop(image, b, crop_size, margin) for b in boxes]).to(device)
    with eval_mode(model):
        ids, lengths, _ = model.generate(crops, beam_size=beam_size, max_len=max_len)
    return [words(vocab, ids[k].cpu(), int(lengths[k])) for k in range(len(boxes))]


class CaptionEvaluator:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR when pycocoevalcap and java are there) of the
    model's sentences for the split's images; keys ``<prefix>BLEU-4`` etc."""

    def __init__(self, beam_size: int = 1, max_len: int = 20, length_norm: float = 0.0, meteor: bool = True,
                 prefix: str = ""):
        # Checked here, at build, so a bad value is refused before any training or decoding.
        if beam_size < 1:
            raise ValueError(f"captions evaluator: beam_size must be >= 1, got {beam_size}")
        if max_len < 1:
            raise ValueError(f"captions evaluator: max_len must be >= 1, got {max_len}")
        if length_norm < 0:
            raise ValueError(f"captions evaluator: length_norm must be >= 0, got {length_norm}")
        self.beam_size, self.max_len, self.length_norm = beam_size, max_len, length_norm
        self.meteor, self.prefix = meteor, prefix
        self._warned = False

    def score(self, refs: Dict[int, List[str]], hyps: Dict[int, str]) -> Dict[str, float]:
        refs = {i: refs[i] for i in hyps}
        scores = caption_scores(refs, hyps, use_meteor=self.meteor)
        skipped = scores.pop("skipped")
        if skipped and self.meteor and not self._warned:
            warnings.warn("; ".join(skipped), RuntimeWarning, stacklevel=3)
            self._warned = True
        return {f"{self.prefix}{k}": float(v) for k, v in scores.items()}

    def __call__(self, model, loader, *, device) -> Dict[str, float]:
        hyps = describe(model, loader, device=device, beam_size=self.beam_size, max_len=self.max_len,
                        length_norm=self.length_norm)
        return self.score(references(loader.dataset), hyps)
