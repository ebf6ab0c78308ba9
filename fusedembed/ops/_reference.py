"""Pure-PyTorch references of every op: the tests' ground truth and the fallback when
fusedembed._C is not built. Clear over fast; same numerics contract as the kernels."""

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GeM over all dims after (B, C), scaled by the row maximum so nothing overflows.

    p is a 0-d/1-element tensor (shared) or a (C,) tensor (per channel)."""
    B, C = x.shape[:2]
    xc = x.reshape(B, C, -1).to(_acc_dtype(x.dtype)).clamp(min=eps)
    pc = p.to(xc.dtype).reshape(-1)
    pc = pc.view(1, -1) if pc.numel() > 1 else pc.reshape(())
    m = xc.amax(-1)
    ratio = xc / m.unsqueeze(-1)
    return (m * ratio.pow(pc.unsqueeze(-1) if pc.dim() else pc).mean(-1).pow(1 / pc)).to(x.dtype)


# ---- mrf_viterbi / crf_viterbi: batched loops over the N positions, float32 throughout --------
# Tie rule (as in the kernels): a state keeps its own previous state when that is among the best,
# else takes the lowest best index; the last state is the lowest best index. NaN/+inf in what a
# sentence uses gives it score NaN and path -1; -inf marks a forbidden choice.


def _usable(x: torch.Tensor) -> torch.Tensor:
    return x < float("inf")  # False for NaN and +inf


def _first_max(x: torch.Tensor):
    """Max over the last dim and the lowest index reaching it."""
    m = x.amax(-1)
    idx = torch.arange(x.shape[-1], device=x.device)
    return m, torch.where(x == m.unsqueeze(-1), idx, x.shape[-1]).amin(-1)


def _counts(t, B: int, default: int, device) -> torch.Tensor:
    return torch.full((B,), default, dtype=torch.long, device=device) if t is None else t.to(device, torch.long)


def _backtrace(bps, last, word_ok, bad):
    B, N = word_ok.shape
    path = torch.full((B, N), -1, dtype=torch.long, device=word_ok.device)
    cur = last
    for j in range(N - 1, -1, -1):
        path[:, j] = torch.where(word_ok[:, j], cur, -1)
        if j > 0:
            cur = torch.where(word_ok[:, j], bps[j - 1].gather(1, cur[:, None]).squeeze(1), cur)
    return path.masked_fill(bad[:, None], -1)


def _finish_score(score, lengths, bad):
    score = torch.where(lengths == 0, torch.zeros_like(score), score)
    return torch.where(bad, torch.full_like(score, float("nan")), score)


def mrf_viterbi(unary: torch.Tensor, beta: torch.Tensor, lengths=None, num_regions=None):
    """Potts chain-MRF Viterbi: (assignment int64 (B, N), score float32 (B,)). beta: 1 or B values."""
    B, N, M = unary.shape
    dev = unary.device
    u = unary.float()
    be = beta.to(dev, torch.float32).reshape(-1).expand(B)
    L, R = _counts(lengths, B, N, dev), _counts(num_regions, B, M, dev)
    states = torch.arange(M, device=dev)
    region_ok = states < R[:, None]
    word_ok = torch.arange(N, device=dev) < L[:, None]
    used = word_ok[:, :, None] & region_ok[:, None, :]
    bad = ~_usable(be) | (used & ~_usable(u)).flatten(1).any(1)
    if N == 0:
        return torch.empty((B, 0), dtype=torch.long, device=dev), _finish_score(u.new_zeros(B), L, bad)
    # Bad sentences and unread positions hold zeros (so no NaN reaches an argmax); padded
    # regions are -inf so they never win.
    u = torch.where(bad[:, None, None] | ~word_ok[:, :, None], 0.0, u)
    u = u.masked_fill(~region_ok[:, None, :], float("-inf"))
    be = torch.where(bad, 0.0, be)[:, None]
    d = u[:, 0]
    bps = []
    for j in range(1, N):
        v1, i1 = _first_max(d)
        v2, i2 = _first_max(d.scatter(1, i1[:, None], float("-inf")))
        is1 = states == i1[:, None]
        switch = torch.where(is1, v2[:, None], v1[:, None])  # best previous state other than t
        stay_val = d + be
        stay = stay_val >= switch
        bps.append(torch.where(stay, states, torch.where(is1, i2[:, None], i1[:, None])))
        d = torch.where(word_ok[:, j, None], u[:, j] + torch.where(stay, stay_val, switch), d)
    score, last = _first_max(d)
    return _backtrace(bps, last, word_ok, bad), _finish_score(score, L, bad)


def crf_viterbi(emissions: torch.Tensor, transitions: torch.Tensor, lengths=None, start=None, end=None):
    """Linear-chain CRF Viterbi, transitions (M, M) or (B, M, M) indexed [from, to]."""
    B, N, M = emissions.shape
    dev = emissions.device
    e = emissions.float()
    T = transitions.to(dev, torch.float32).expand(B, M, M)
    L = _counts(lengths, B, N, dev)
    word_ok = torch.arange(N, device=dev) < L[:, None]
    bad = (word_ok[:, :, None] & ~_usable(e)).flatten(1).any(1) | (~_usable(T)).flatten(1).any(1)
    for v in (start, end):
        if v is not None:
            bad = bad | (~_usable(v.float())).any()
    if N == 0:
        return torch.empty((B, 0), dtype=torch.long, device=dev), _finish_score(e.new_zeros(B), L, bad)
    zero = bad[:, None]
    e = torch.where(zero[:, :, None] | ~word_ok[:, :, None], 0.0, e)
    T = torch.where(zero[:, :, None], 0.0, T)
    start = None if start is None else torch.where(zero, 0.0, start.to(dev, torch.float32))
    end = None if end is None else torch.where(zero, 0.0, end.to(dev, torch.float32))
    states = torch.arange(M, device=dev)
    diag = T.diagonal(dim1=1, dim2=2)
    d = e[:, 0] if start is None else e[:, 0] + start
    bps = []
    for j in range(1, N):
        cand = d[:, :, None] + T  # (B, from, to)
        m = cand.amax(1)
        first = torch.where(cand == m[:, None, :], states[None, :, None], M).amin(1)
        bps.append(torch.where(d + diag >= m, states, first))
        d = torch.where(word_ok[:, j, None], e[:, j] + m, d)
    score, last = _first_max(d if end is None else d + end)
    return _backtrace(bps, last, word_ok, bad), _finish_score(score, L, bad)
