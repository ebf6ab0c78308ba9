"""Position shift: where a caption sits in the fixed window of L token slots.

Training places each caption at a random offset (a cheap augmentation the authors use); at
test time the text feature is the sum over every offset the caption fits at. Both are index
arithmetic over the whole batch: all placements of all captions go through the text net as
one batch, and the features are summed back per caption with ``index_add``.
"""

import torch


def fit_lengths(tokens: torch.Tensor, lengths, max_len: int) -> torch.Tensor:
    """Caption lengths clipped to the window; counted from the non-pad ids when not given
    (tokens are left-aligned, ``<pad>`` = 0)."""
    if lengths is None:
        lengths = (tokens != 0).sum(1)
    return lengths.to(tokens.device).long().clamp(0, min(max_len, tokens.shape[1]))


def place(tokens: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) ids with caption b's first ``lengths[b]`` tokens at
    ``[offsets[b], offsets[b] + lengths[b])`` and ``<pad>`` elsewhere."""
    src = torch.arange(max_len, device=tokens.device)[None] - offsets[:, None]
    inside = (src >= 0) & (src < lengths[:, None])
    picked = tokens.gather(1, src.clamp(0, max(tokens.shape[1] - 1, 0)))
    return torch.where(inside, picked, torch.zeros_like(picked))


def random_offsets(lengths: torch.Tensor, max_len: int, generator=None) -> torch.Tensor:
    """Uniform offset in ``[0, max_len - length]`` per caption."""
    slots = (max_len - lengths + 1).clamp(min=1)
    u = torch.rand(lengths.shape, device=lengths.device, generator=generator)
    return (u * slots).long().clamp(max=slots - 1)


def all_placements(tokens: torch.Tensor, lengths: torch.Tensor, max_len: int):
    """Every placement of every caption: ``(placed (P, max_len), owner (P,))`` where row p is
    caption ``owner[p]`` at one offset. A caption of n ≥ 1 words has ``max_len - n + 1``."""
    slots = (max_len - lengths.clamp(min=1) + 1).clamp(min=1)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=tokens.device), slots)
    first = torch.cumsum(slots, 0) - slots
    offsets = torch.arange(len(owner), device=tokens.device) - first[owner]
    return place(tokens[owner], lengths[owner], offsets, max_len), owner
