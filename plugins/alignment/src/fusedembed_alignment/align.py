"""Word-to-region alignment (Section 3.1.4): unaries ``psi(a_j = t) = v_t . s_j`` per (image,
sentence) pair, decoded exactly by the core's Potts-chain ``mrf_viterbi`` (beta rewards
consecutive words on one region: beta = 0 aligns single words, a large beta whole sentences),
and the text snippets: the runs of consecutive words on one region, each with its box.
"""

from typing import List, NamedTuple, Optional, Sequence

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
