from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from ..ops import alignment_segments, mrf_viterbi


class Alignment(NamedTuple):
    assignment: torch.Tensor  # int64 (B, N) or (N,): region of each word, -1 past the length
    score: torch.Tensor       # float32 (B,) or (): the maximal MRF energy
    segments: Optional[Union[List[List[Tuple[int, int, int]]], List[Tuple[int, int, int]]]]


class ViterbiAligner(nn.Module):
    """Karpathy & Fei-Fei's word-to-region alignment: ``u[j, t] = v_t . s_j`` scored by
    ``mrf_viterbi`` with a reward ``beta`` for consecutive words on one region.

    ``forward(regions, words, lengths=None, num_regions=None, segments=True)`` takes
    regions (B, M, D) / words (B, N, D), or one image (M, D) / sentence (N, D), and returns an
    ``Alignment``; ``segments`` (``(start, end, region)`` runs, end exclusive) costs a host sync,
    so pass ``segments=False`` to skip it. Decoding has no gradient.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, lengths=None, num_regions=None,
                segments: bool = True) -> Alignment:
        single = regions.dim() == 2
        if single:
            regions, words = regions.unsqueeze(0), words.unsqueeze(0)
        if regions.dim() != 3 or words.dim() != 3:
            raise ValueError(f"ViterbiAligner: regions and words must both be 2-d or both 3-d, got "
                             f"{list(regions.shape)} and {list(words.shape)}")
        unary = words @ regions.transpose(1, 2)
        assignment, score = mrf_viterbi(unary, self.beta, lengths, num_regions)
        segs = alignment_segments(assignment) if segments else None
        if single:
            return Alignment(assignment[0], score[0], segs[0] if segs is not None else None)
        return Alignment(assignment, score, segs)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
