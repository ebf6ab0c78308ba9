"""Viterbi decoding of chain models in one kernel launch per batch.

``mrf_viterbi``: the Potts chain MRF of Karpathy & Fei-Fei's word-to-region alignment,
``E(a) = sum_j u[j, a_j] + beta * #{j : a_j = a_(j+1)}``, maximized exactly in O(N*M) per sentence
(the best and second-best previous states suffice, for any beta, negative included).
``crf_viterbi``: the generic linear-chain CRF decode, O(N*M^2).
``alignment_segments``: the runs of consecutive words on one region, i.e. the text snippets.

Shared rules:

* Math and scores are float64 for float64 inputs, float32 for float32/float16/bfloat16.
* Ties: a position keeps the previous position's state when that is among the best (prefer
  staying on the same region), otherwise the lowest best state index; the last state is the
  lowest best index. Identical on CPU, CUDA and in the reference, so paths agree exactly.
* Padding: ``path[b, j] == -1`` for ``j >= lengths[b]``; a sentence of length 0 scores 0.
* Values: ``-inf`` marks a forbidden choice (word-region pair, transition); if every path is
  forbidden the score is ``-inf`` (the path then only follows the tie rule). NaN or ``+inf`` in
  anything a sentence uses (its first ``lengths[b]`` rows and ``num_regions[b]`` columns, beta,
  transitions, start, end) gives that sentence score NaN and path all -1; the others are
  unaffected. Values outside that range (padding) are never read.
* ``lengths`` outside ``[0, N]`` and ``num_regions`` outside ``[1, M]`` raise on the CPU; on CUDA,
  where checking would cost a host sync, they give that sentence the NaN / -1 row instead.
* No autograd: inputs are detached, outputs carry no gradient.
"""

from numbers import Real
from typing import List, Optional, Tuple, Union

import torch

__all__ = ["mrf_viterbi", "crf_viterbi", "alignment_segments"]

def _beta_tensor(unary: torch.Tensor, beta) -> torch.Tensor:
    if isinstance(beta, torch.Tensor):
        return beta
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"mrf_viterbi: beta must be a float or a tensor, got {type(beta).__name__}")
    return torch.tensor(float(beta), dtype=torch.float32, device=unary.device)


def _counts(x, device) -> Optional[torch.Tensor]:
    """Lengths / region counts: a tensor as given, a Python sequence as int64 on ``device``."""
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(x, dtype=torch.long, device=device)


def mrf_viterbi(unary: torch.Tensor, beta: Union[float, torch.Tensor], lengths=None,
                num_regions=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best word-to-region assignment of each sentence under the Potts chain MRF.

    Args:
        unary: (B, N, M) float32/float16/bfloat16/float64, ``unary[b, j, t]`` the score of word j on
            region t (Karpathy: ``v_t . s_j``).
        beta: the reward for consecutive words on the same region; a float, a 0-d/1-element
            tensor or a (B,) tensor (one per sentence). Any real value: 0 aligns every word on
            its own, large values push whole sentences onto one region, negative values
            penalize staying.
        lengths: (B,) integer tensor (or sequence) of words per sentence, in [0, N]; default N.
        num_regions: (B,) integer tensor (or sequence) of regions per image, in [1, M]; regions
            at or past it are padding and never chosen. Default M.

    Returns:
        ``(assignment, score)``: int64 (B, N) region per word (-1 past the length) and (B,)
        the maximal energy (float64 for float64 unaries, else float32). Ties and non-finite
        values follow the module's rules.
    """
    if not isinstance(unary, torch.Tensor):
        raise TypeError(f"mrf_viterbi: unary must be a tensor, got {type(unary).__name__}")
    beta_t = _beta_tensor(unary, beta).detach()
    lengths = _counts(lengths, unary.device)
    num_regions = _counts(num_regions, unary.device)
    unary = unary.detach()
    return tuple(torch.ops.fusedembed.mrf_viterbi(unary, beta_t, lengths, num_regions))


def crf_viterbi(emissions: torch.Tensor, transitions: torch.Tensor, lengths=None,
                start: Optional[torch.Tensor] = None,
                end: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best tag path of each sequence under a linear-chain CRF.

    Args:
        emissions: (B, N, M) float32/float16/bfloat16/float64 (batch first).
        transitions: (M, M) shared or (B, M, M) per sequence; ``transitions[i, j]`` scores the
            step from tag i to tag j. ``-inf`` forbids a transition (constrained decoding).
        lengths: (B,) integer tensor (or sequence) in [0, N]; default N.
        start, end: optional (M,) scores of the first and the last tag.

    Returns:
        ``(path, score)``: int64 (B, N) (-1 past the length), (B,) best path score (float64
        for float64 emissions, else float32).

    Switching from pytorch-crf: ``CRF(M, batch_first=True).decode(emissions, mask)`` equals
    ``crf_viterbi(emissions, crf.transitions, mask.sum(1), crf.start_transitions,
    crf.end_transitions)`` with ``path[b, :lengths[b]].tolist()`` per sequence (pytorch-crf's
    mask must be a contiguous prefix, first step on; transpose (N, B, M) emissions and masks
    when batch_first=False). The paths agree wherever the best path is unique; on exact ties
    pytorch-crf takes ``torch.max``'s index, we take the documented rule. We also return the
    score (pytorch-crf's decode does not) and never sync with the host.
    """
    if not isinstance(emissions, torch.Tensor):
        raise TypeError(f"crf_viterbi: emissions must be a tensor, got {type(emissions).__name__}")
    if not isinstance(transitions, torch.Tensor):
        raise TypeError(f"crf_viterbi: transitions must be a tensor, got {type(transitions).__name__}")
    for name, v in (("start", start), ("end", end)):
        if v is not None and not isinstance(v, torch.Tensor):
            raise TypeError(f"crf_viterbi: {name} must be a (M,) tensor or None, got {type(v).__name__}")
    lengths = _counts(lengths, emissions.device)
    emissions, transitions = emissions.detach(), transitions.detach()
    start = None if start is None else start.detach()
    end = None if end is None else end.detach()
    return tuple(torch.ops.fusedembed.crf_viterbi(emissions, transitions, lengths, start, end))


def alignment_segments(assignment: torch.Tensor, lengths=None, as_tensor: bool = False
                       ) -> Union[List[List[Tuple[int, int, int]]], torch.Tensor]:
    """The runs of consecutive words on one region: Karpathy's text snippets.

    Args:
        assignment: (B, N) integer tensor, e.g. ``mrf_viterbi``'s; entries < 0 are padding.
        lengths: optional (B,) words per sentence; positions at or past it are ignored.
        as_tensor: return one (S, 4) int64 tensor on ``assignment``'s device with rows
            ``(sentence, start, end, region)``, ordered by sentence then start, without a host
            sync; otherwise a list (one per sentence) of ``(start, end, region)`` tuples.

    ``end`` is exclusive: words ``start .. end-1`` lie on ``region``. A run also ends at a
    padding position, so a sentence decoded as all -1 (a NaN score) has no segments.
    """
    if not isinstance(assignment, torch.Tensor) or assignment.dim() != 2:
        raise ValueError("alignment_segments: assignment must be a (B, N) tensor")
    B, N = assignment.shape
    a = assignment.long()
    valid = a >= 0
    if lengths is not None:
        lengths = _counts(lengths, a.device).to(a.device)
        valid &= torch.arange(N, device=a.device) < lengths[:, None]
    prev_same = torch.zeros_like(valid)
    prev_same[:, 1:] = valid[:, 1:] & valid[:, :-1] & (a[:, 1:] == a[:, :-1])
    starts = valid & ~prev_same
    # A run ends where the next position does not continue it.
    next_same = torch.zeros_like(valid)
    next_same[:, :-1] = prev_same[:, 1:]
    ends = valid & ~next_same
    sb, sj = starts.nonzero(as_tuple=True)  # row-major: by sentence, then position
    _, ej = ends.nonzero(as_tuple=True)     # the k-th end closes the k-th start
    rows = torch.stack([sb, sj, ej + 1, a[sb, sj]], 1)
    if as_tensor:
        return rows
    out: List[List[Tuple[int, int, int]]] = [[] for _ in range(B)]
    for b, s, e, r in rows.tolist():
        out[b].append((s, e, r))
    return out

