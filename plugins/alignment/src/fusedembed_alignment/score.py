"""The image-sentence score of Karpathy & Fei-Fei (eq. 8) and the bidirectional ranking loss (eq. 9).

``S_kl = sum_t max_i v_i . s_t``: each word t of sentence l picks its best region i of image k.
Padding words (``t >= lengths[l]``) add nothing and missing regions (``i >= num_regions[k]``)
are never picked. The score matrix of every image against every sentence is computed in blocks
of images so that the (images, sentences, words, regions) dot products never exist at once;
``max`` sends the gradient to the argmax region only, as the paper's subgradient does.
"""

import torch
import torch.distributed as dist
from torch import nn

from fusedembed.distributed import all_gather_with_grad, gather_batch

# Dot products held at once: 2^24 float32 = 64 MiB.
DEFAULT_MAX_ELEMENTS = 1 << 24


def _mask(counts, size: int, name: str, rows: int, device) -> torch.Tensor:
    if counts is None:
        return torch.ones(rows, size, dtype=torch.bool, device=device)
    c = torch.as_tensor(counts, device=device).reshape(-1)
    if c.numel() != rows:
        raise ValueError(f"alignment_scores: {name} must have {rows} entries, got {c.numel()}")
    if rows and (c.min() < 0 or c.max() > size):
        raise ValueError(f"alignment_scores: {name} must be in [0, {size}], got {int(c.min() if c.min() < 0 else c.max())}")
    return torch.arange(size, device=device)[None, :] < c[:, None]


def alignment_scores(regions: torch.Tensor, words: torch.Tensor, num_regions=None, lengths=None,
                     max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """S (K, L): S[k, l] = sum over the words t < lengths[l] of max over the regions
    i < num_regions[k] of ``regions[k, i] . words[l, t]``.

    regions (K, M, D), words (L, T, D); num_regions (K,) and lengths (L,) default to all.
    An image with no region scores 0 against every sentence.
    """
    if regions.dim() != 3 or words.dim() != 3 or regions.shape[2] != words.shape[2]:
        raise ValueError(f"alignment_scores: regions must be (K, M, D) and words (L, T, D) with one D, "
                         f"got {list(regions.shape)} and {list(words.shape)}")
    if max_elements < 1:
        raise ValueError(f"alignment_scores: max_elements must be >= 1, got {max_elements}")
    (K, M, _), (L, T, _) = regions.shape, words.shape
    rmask = _mask(num_regions, M, "num_regions", K, regions.device)
    wmask = _mask(lengths, T, "lengths", L, words.device).to(words.dtype)
    block = max(1, max_elements // max(1, L * T * M))
    out = []
    for a in range(0, K, block):
        dots = torch.einsum("kmd,ltd->kltm", regions[a:a + block], words)
        dots = dots.masked_fill(~rmask[a:a + block, None, None, :], float("-inf"))
        best = dots.max(dim=3).values
        # No region at all: -inf best; where() (not multiplication) keeps the gradient finite.
        best = torch.where(torch.isfinite(best), best, torch.zeros((), dtype=best.dtype, device=best.device))
        out.append((best * wmask[None]).sum(dim=2))
    if not out:
        return regions.new_zeros(0, L)
    return torch.cat(out)


def _pad_to_global(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Pads ``x`` along ``dim`` with zeros to the largest size any rank has (gathering needs
    equal shapes past dim 0)."""
    size = torch.tensor([x.shape[dim]], device=x.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    extra = int(size) - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class RankingLoss(nn.Module):
    """Bidirectional max-margin ranking (eq. 9) over the batch's score matrix:
    ``sum_k [sum_{l != k} max(0, S_kl - S_kk + margin) + sum_{l != k} max(0, S_lk - S_kk + margin)]``.

    The paper's sums run over every l; the l = k terms are the constant ``2 * margin`` per
    image and carry no gradient, so they are left out (the loss is 0 when every pair is ranked
    by the margin). ``reduction``: "sum" (the paper) or "mean" (over images). When ``instance``
    is given, pairs of different items of one image (two captions of it) are not negatives.
    Under DDP the matrix is that of the global batch.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "sum",
                 max_elements: int = DEFAULT_MAX_ELEMENTS):
        super().__init__()
        if margin < 0:
            raise ValueError(f"alignment/ranking: margin must be >= 0, got {margin}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"alignment/ranking: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.margin, self.reduction, self.max_elements = float(margin), reduction, int(max_elements)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, num_regions: torch.Tensor,
                lengths: torch.Tensor, instance=None) -> torch.Tensor:
        if len(regions) != len(words):
            raise ValueError(f"alignment/ranking: needs one sentence per image, got {len(regions)} images "
                             f"and {len(words)} sentences")
        if dist.is_available() and dist.is_initialized():
            regions, words = _pad_to_global(regions, 1), _pad_to_global(words, 1)
            regions, words = all_gather_with_grad(regions), all_gather_with_grad(words)
            num_regions, lengths = gather_batch(num_regions), gather_batch(lengths)
            instance = None if instance is None else gather_batch(torch.as_tensor(instance, device=words.device))
        S = alignment_scores(regions, words, num_regions, lengths, self.max_elements)
        diag = S.diagonal()
        if instance is None:
            negative = ~torch.eye(len(S), dtype=torch.bool, device=S.device)
        else:
            inst = torch.as_tensor(instance, device=S.device).reshape(-1)
            negative = inst[:, None] != inst[None, :]
        sentences = (S - diag[:, None] + self.margin).clamp(min=0)   # image k ranks sentences l
        images = (S - diag[None, :] + self.margin).clamp(min=0)      # sentence l ranks images k
        per_image = (sentences * negative).sum(1) + (images * negative).sum(0)
        return per_image.sum() if self.reduction == "sum" else per_image.mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
