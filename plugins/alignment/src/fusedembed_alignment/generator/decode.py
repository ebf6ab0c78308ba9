"""Greedy and beam-search decoding of a :class:`~.model.MultimodalRNN`.

Both return ``(ids, lengths, log_prob)``: ids (B, max_len) END-padded words (END itself is not
included), the number of words, and the log-probability of the sentence, END included (a
sentence cut at ``max_len`` has no END term). ``<unk>`` is never emitted. Call them on a model
in eval mode (dropout off).

Beam search follows neuraltalk's: k hypotheses per image; a hypothesis that emitted END stays
in the beam with its score and competes with the live ones (so finished hypotheses are kept,
not lost to longer ones), and the search stops when all k are finished or at ``max_len``. It runs
batched over images x beams on the model's device, one (B*k)-row step per word. Candidates are
ranked by a stable sort, so ties break by (beam, word id) and the result is deterministic.
``length_norm`` = a > 0 picks the returned hypothesis by score / steps^a (steps = words, plus
1 for END) instead of the raw score; the search itself ranks by raw score, as neuraltalk does.

Beam search can prune the greedy path and end below it (measured: an LSTM cut at ``max_len``,
-22.10 for k = 3 against greedy's -21.99). So the greedy sentence, decoded first (1/k of the
work), is a candidate of the final pick too: the result is never worse than greedy's.
"""

import torch

from fusedembed.data import UNK_ID

from .model import END_ID, START_ID


def _log_probs(model, prev, state, b_v, first: bool):
    state, h = model.step(model.embed(prev), state, b_v, first)
    logp = torch.log_softmax(model.logits(h).float(), dim=-1)
    logp[:, UNK_ID] = float("-inf")
    return state, logp


def _check(max_len: int, beam_size: int, vocab_size: int):
    if max_len < 1:
        raise ValueError(f"generate: max_len must be >= 1, got {max_len}")
    if not 1 <= beam_size <= vocab_size - 2:
        raise ValueError(f"generate: beam_size must be in [1, vocab_size - 2 = {vocab_size - 2}], got {beam_size}")


@torch.no_grad()
def greedy(model, images: torch.Tensor, max_len: int = 20):
    """The most probable word at every step until END or ``max_len`` words."""
    _check(max_len, 1, model.vocab_size)
    B, dev = len(images), images.device
    b_v = model.image_vector(images)
    state = model.start(b_v)
    ids = torch.full((B, max_len), END_ID, dtype=torch.long, device=dev)
    score = torch.zeros(B, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    prev = torch.full((B,), START_ID, dtype=torch.long, device=dev)
    for t in range(max_len):
        state, logp = _log_probs(model, prev, state, b_v, first=t == 0)
        best, word = logp.max(-1)
        score = score + torch.where(alive, best, 0.0)
        ids[:, t] = torch.where(alive, word, END_ID)
        alive = alive & (word != END_ID)
        prev = word
        if not bool(alive.any()):
            break
    return ids, (ids != END_ID).sum(1), score


def _take(state, rows):
    if isinstance(state, tuple):
        return tuple(s[rows] for s in state)
    return state[rows]


@torch.no_grad()
def beam_search(model, images: torch.Tensor, beam_size: int = 3, max_len: int = 20, length_norm: float = 0.0,
                with_greedy: bool = True):
    """Beam search with ``beam_size`` hypotheses per image (1 gives the words of :func:`greedy`);
    ``with_greedy``: the greedy sentence is a candidate of the final pick (module docstring)."""
    V = model.vocab_size
    _check(max_len, beam_size, V)
    if length_norm < 0:
        raise ValueError(f"generate: length_norm must be >= 0, got {length_norm}")
    B, k, dev = len(images), beam_size, images.device
    b_v = model.image_vector(images)
    state = _take(model.start(b_v), torch.arange(B, device=dev).repeat_interleave(k))
    b_v = b_v.repeat_interleave(k, 0)
    scores = torch.full((B, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0                          # one live hypothesis at the start
    ids = torch.full((B, k, max_len), END_ID, dtype=torch.long, device=dev)
    finished = torch.zeros(B, k, dtype=torch.bool, device=dev)
    prev = torch.full((B * k,), START_ID, dtype=torch.long, device=dev)
    base = (torch.arange(B, device=dev) * k)[:, None]
    for t in range(max_len):
        state, logp = _log_probs(model, prev, state, b_v, first=t == 0)
        cand = scores[..., None] + logp.view(B, k, V)
        # A finished hypothesis has one continuation, itself (END again, score unchanged).
        kept = torch.full_like(cand, float("-inf"))
        kept[..., END_ID] = scores
        cand = torch.where(finished[..., None], kept, cand).view(B, k * V)
        order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :k]
        scores = cand.gather(1, order)
        src, word = order // V, order % V
        ids = ids.gather(1, src[..., None].expand(-1, -1, max_len)).clone()
        was_finished = finished.gather(1, src)
        ids[:, :, t] = torch.where(was_finished, END_ID, word)
        finished = was_finished | (word == END_ID)
        rows = (base + src).flatten()
        state, b_v, prev = _take(state, rows), b_v[rows], word.flatten()
        if bool(finished.all()):
            break
    if with_greedy:
        g_ids, _, g_score = greedy(model, images, max_len)
        ids = torch.cat([ids, g_ids[:, None]], 1)
        scores = torch.cat([scores, g_score[:, None]], 1)
    lengths = (ids != END_ID).sum(2)
    rank = scores
    if length_norm > 0:
        steps = lengths + (lengths < max_len).long()           # + 1 for END, when it was emitted
        rank = scores / steps.clamp(min=1).float() ** length_norm
    pick = torch.sort(rank, dim=1, descending=True, stable=True).indices[:, 0]
    rows = torch.arange(B, device=dev)
    return ids[rows, pick], lengths[rows, pick], scores[rows, pick]
