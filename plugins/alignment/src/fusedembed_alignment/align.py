"""Word-to-region alignment (Section 3.1.4): unaries ``psi(a_j = t) = v_t . s_j`` per (image,
sentence) pair, decoded exactly by the core's Potts-chain ``mrf_viterbi`` (beta rewards
consecutive words on one region: beta = 0 aligns single words, a large beta whole sentences),
and the text snippets: the runs of consecutive words on one region, each with its box.
:func:`split_snippets` decodes every (image, own caption) pair of a split, :func:`region_records`
turns them into the region generator's records (``alignment/region_snippets``).
"""

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import torch

from fusedembed.ops import alignment_segments, mrf_viterbi


class Snippet(NamedTuple):
    start: int              # first word
    end: int                # one past the last word
    region: int             # 0 is the whole image, i >= 1 box i - 1
    score: float            # sum of the snippet's unaries v_region . s_j
    words: Optional[str]    # the snippet's text, when the sentence's words are given


def decode(regions: torch.Tensor, words: torch.Tensor, beta: float, num_regions=None,
           lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best assignment (B, N) of each word to a region (-1 past the length) and its MRF energy
    (B,), for B pairs: regions (B, M, h) of each pair's image, words (B, N, h) of its sentence."""
    if regions.dim() != 3 or words.dim() != 3 or len(regions) != len(words):
        raise ValueError(f"alignment decode: regions (B, M, h) and words (B, N, h) of B pairs, got "
                         f"{list(regions.shape)} and {list(words.shape)}")
    unary = words.float() @ regions.float().transpose(1, 2)
    return mrf_viterbi(unary, beta, lengths, num_regions)


def snippets(regions: torch.Tensor, words: torch.Tensor, assignment: torch.Tensor,
             tokens: Optional[Sequence[Sequence[str]]] = None) -> List[List[Snippet]]:
    """The snippets of decoded pairs (see :func:`decode`), with their scores and texts."""
    unary = words.float() @ regions.float().transpose(1, 2)
    out = []
    for b, runs in enumerate(alignment_segments(assignment)):
        row = []
        for start, end, region in runs:
            score = float(unary[b, start:end, region].sum())
            text = " ".join(tokens[b][start:end]) if tokens is not None else None
            row.append(Snippet(int(start), int(end), int(region), score, text))
        out.append(row)
    return out


def caption_words(dataset, j: int) -> List[str]:
    """Caption j's words as the model read them: the caption re-tokenised when that gives its
    token ids (so words out of the vocabulary keep their spelling), else the vocabulary's words."""
    from fusedembed.data import tokenize

    ids = dataset.tokens_of(j).tolist()
    words = tokenize(dataset.texts[j])
    return words if dataset.vocab.encode(words) == ids else dataset.vocab.decode(ids)


def _image_batches(num_images: int, batch_size: int) -> List[range]:
    return [range(a, min(a + batch_size, num_images)) for a in range(0, num_images, batch_size)]


@torch.no_grad()
def split_snippets(model, dataset, beta: float, *, device, batch_size: int, workers: int = 0,
                   progress: Optional[bool] = None) -> Iterator[tuple[int, List[Snippet]]]:
    """``(image, snippets)`` of every caption of a caption dataset with its own image, image-major:
    batches of ``batch_size`` images and all their captions are encoded and decoded together on
    ``device`` (the model's), so memory stays one batch whatever the split's size. ``progress``:
    a bar on stderr (None: only at a terminal)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from fusedembed.inference import collate_of

    from .evaluator import encode_images, encode_texts

    parts = _image_batches(dataset.num_images, batch_size)
    # Captions are numbered image by image, so an image batch's captions are one id range.
    captions = [range(dataset.captions_of(r.start).start, dataset.captions_of(r.stop - 1).stop) for r in parts]
    loader = {view: DataLoader(dataset.with_view(view), batch_sampler=[list(p) for p in batches],
                               collate_fn=collate_of(dataset), num_workers=workers)
              for view, batches in (("image", parts), ("text", captions))}
    with tqdm(total=dataset.num_images, desc="snippets", unit="img", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        for images, ids, image_batch, text_batch in zip(parts, captions, loader["image"], loader["text"]):
            regions, counts = encode_images(model, image_batch, device)
            words, lengths = encode_texts(model, text_batch, device)
            owner = dataset.caption_to_image[ids.start:ids.stop]
            pair = (owner - images.start).to(regions.device)
            assignment, _ = decode(regions[pair], words, beta, counts[pair], lengths)
            runs = snippets(regions[pair].cpu(), words.cpu(), assignment.cpu(),
                            [caption_words(dataset, j) for j in ids])
            yield from zip(owner.tolist(), runs)
            bar.update(len(images))


def region_records(image: int, runs: Sequence[Snippet], boxes: torch.Tensor) -> tuple[List[dict], int]:
    """The ``alignment/region_snippets`` records of one caption's snippets (``boxes``: the
    image's, region i >= 1 is box i - 1) and how many were left out: the runs on the whole image
    (region 0, no box: the full-image generator learns those) and on a box with no area (the
    reader refuses them)."""
    out = []
    for snip in runs:
        box = boxes[snip.region - 1].tolist() if snip.region > 0 else None
        if box is not None and box[2] > box[0] and box[3] > box[1]:
            out.append({"image": image, "box": box, "snippet": snip.words})
    return out, len(runs) - len(out)


def write_jsonl(path, records: Iterable[dict]) -> int:
    """Writes ``records`` one JSON object a line to a temporary file renamed to ``path`` at the
    end, so a failure part way leaves no half-written file (nor the temporary); their count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


COLOURS = ("red", "blue", "green", "orange", "purple", "brown", "magenta", "cyan")


def draw_snippets(image, boxes: torch.Tensor, runs: Sequence[Snippet], min_side: int = 256):
    """A PIL picture of ``image`` (float CHW in [0, 1]) with each snippet's region outlined and
    labelled by its words (region 0, the whole image, outlines the frame); the picture is
    scaled up so its short side is at least ``min_side``, the text listed below it."""
    from PIL import Image, ImageDraw

    H, W = image.shape[1:]
    scale = max(1, -(-min_side // min(H, W)))
    pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels).resize((W * scale, H * scale), Image.NEAREST)
    lines = [f"{k + 1}. {snip.words}  ({'whole image' if snip.region == 0 else f'box {snip.region - 1}'}, "
             f"{snip.score:.2f})" for k, snip in enumerate(runs)]
    # The default bitmap font is about 6 px a character: room for the longest line.
    width = max([W * scale] + [6 * len(line) + 6 for line in lines])
    sheet = Image.new("RGB", (width, H * scale + 14 * len(runs) + 6), "white")
    sheet.paste(picture, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, snip in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        box = [0, 0, W * scale - 1, H * scale - 1] if snip.region == 0 else \
            (boxes[snip.region - 1].float() * scale).tolist()
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 3, box[1] + 2), str(k + 1), fill=colour)
        draw.text((3, H * scale + 3 + 14 * k), lines[k], fill=colour)
    return sheet
