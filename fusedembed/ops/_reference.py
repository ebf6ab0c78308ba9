"""Pure-PyTorch references of every op: the tests' ground truth and the fallback when
fusedembed._C is not built. Clear over fast; same numerics contract as the kernels."""

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gem_rows(x: torch.Tensor, p: torch.Tensor, eps: float):
    """x as (B, C, N) clamped to eps in the accumulation type, and p broadcastable to it."""
    B, C = x.shape[:2]
    xc = x.reshape(B, C, -1).to(_acc_dtype(x.dtype)).clamp(min=eps)
    pc = p.to(xc.dtype).reshape(-1)
    return xc, (pc.view(1, -1, 1) if pc.numel() > 1 else pc.reshape(()))


def _gem_acc(xc: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
    """(B, C, 1) GeM of clamped rows in the accumulation type. (x / m)^p is taken in log space, so a
    ratio that underflows still gets its power; a row holding +inf pools to +inf, NaN to NaN."""
    m = xc.amax(-1, keepdim=True)
    s = torch.exp(pc * (xc.log() - m.log())).mean(-1, keepdim=True)
    y = m * s.pow(1 / pc)
    return torch.where(m == float("inf"), m, y)


def gem_pool_op(x: torch.Tensor, p: torch.Tensor, eps: float) -> torch.Tensor:
    """The ``fusedembed::gem_pool`` op: (B, C) in the accumulation type."""
    xc, pc = _gem_rows(x, p, eps)
    return _gem_acc(xc, pc).squeeze(-1)


def gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GeM over all dims after (B, C); p is a 0-d/1-element tensor (shared) or (C,) (per channel)."""
    return gem_pool_op(x, p, eps).to(x.dtype)


def gem_pool_backward(grad_y, x, p, y, eps: float, x_grad: bool, p_grad: bool):
    """(dx, dp) of gem_pool from its output y (accumulation type), dp reduced to p's shape; empty
    tensors for the ones not wanted. q = max(x, eps) / y is taken in log space (q may underflow)."""
    B, C = x.shape[:2]
    xc, pc = _gem_rows(x, p, eps)
    N = xc.shape[-1]
    ya = y.to(xc.dtype).reshape(B, C, 1)
    lq = xc.log() - ya.log()
    g = grad_y.to(xc.dtype).reshape(B, C, 1)
    dx = x.new_empty((0,))
    if x_grad:
        below = x.reshape(B, C, -1).to(xc.dtype) < eps
        d = torch.where(below, 0.0, g / N * torch.exp((pc - 1) * lq))
        dx = torch.empty_like(x).copy_(d.reshape(x.shape))
    dp = p.new_empty((0,))
    if p_grad:
        row = (g * ya / (N * pc) * (torch.exp(pc * lq) * lq).sum(-1, keepdim=True)).reshape(B, C)
        per_channel = p.dim() == 1 and p.shape[0] == C and C != 1
        dp = (row.sum(0) if per_channel else row.sum()).reshape(p.shape).to(p.dtype)
    return dx, dp


# --- sampled_sigmoid_loss --------------------------------------------------------------------
# Same rules and the same Philox4x32-10 stream as csrc/ops/sampled_sigmoid_loss.h, so the keep
# decisions are bit-identical; the arithmetic runs in float64.

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_COLUMN_COUNTER = 0xFFFFFFFF


def _mulhilo32(m: int, x: torch.Tensor):
    """(hi, lo) 32-bit words of m * x for uint32 values held in int64, without overflowing int64:
    m is split into 16-bit halves so each partial product stays below 2^48."""
    p1 = x * (m >> 16)
    p0 = x * (m & 0xFFFF)
    hi = (p1 + (p0 >> 16)) >> 16
    lo = (((p1 & 0xFFFF) << 16) + p0) & _MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of counters (tensors or ints, broadcast; uint32 values in int64) under key
    (k0, k1): four int64 tensors of uint32 words."""
    ref = next((c for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)), None)
    device = ref.device if ref is not None else None
    c = [torch.as_tensor(v, dtype=torch.int64, device=device) for v in (c0, c1, c2, c3)]
    c = list(torch.broadcast_tensors(*c))
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c[0])
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c[2])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0 = (k0 + _PHILOX_W[0]) & _MASK32
        k1 = (k1 + _PHILOX_W[1]) & _MASK32
    return c


def _uniform24(words: torch.Tensor) -> torch.Tensor:
    return (words >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _pick_word(words, lane: torch.Tensor) -> torch.Tensor:
    return torch.stack(words, -1).gather(-1, lane.unsqueeze(-1)).squeeze(-1)


def _normalized_targets(logits_dtype: torch.dtype, targets: torch.Tensor) -> torch.Tensor:
    """Targets as the kernels read them, already in the accumulation type (values unchanged)."""
    t = targets
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if logits_dtype != torch.float64 and t.dtype == torch.float64:
        t = t.to(torch.float32)
    return t.to(torch.float64 if logits_dtype == torch.float64 else torch.float32)


def _target_is_valid(y: torch.Tensor) -> torch.Tensor:
    return ((y >= 0) & (y <= 1)) | (y == -1)


def _is_positive(y: torch.Tensor, pos_threshold: float) -> torch.Tensor:
    return y.to(torch.float32) >= torch.tensor(pos_threshold, dtype=torch.float32, device=y.device)


def _raise_first_bad_target(y: torch.Tensor) -> None:
    bad = ~_target_is_valid(y)
    if y.device.type == "cpu" and bool(bad.any()):
        raise RuntimeError(f"sampled_sigmoid_loss: targets must be in [0, 1] or -1, got {y[bad][0].item():g}")


def sampled_sigmoid_loss_counts(targets: torch.Tensor, pos_threshold: float) -> torch.Tensor:
    """(2, C) int32: positives (y >= pos_threshold) and negatives (other non-ignored entries) per class."""
    y = targets.to(torch.float64 if targets.dtype == torch.float64 else torch.float32)
    _raise_first_bad_target(y)
    valid = y != -1
    pos = valid & _is_positive(y, pos_threshold)
    return torch.stack([pos.sum(0), (valid & ~pos).sum(0)]).to(torch.int32)


def sampled_sigmoid_keep_mask(targets: torch.Tensor, counts: torch.Tensor, pos_threshold: float, neg_ratio,
                              empty_keep: float, seed: int, offset: int, row_start: int = 0,
                              logits_dtype: torch.dtype = torch.float32):
    """The keep mask m (B, C) bool and the kept columns (C,) bool the kernels use."""
    y = _normalized_targets(logits_dtype, targets)
    B, C = y.shape
    dev = y.device
    npos, nneg = counts[0].to(torch.int64), counts[1].to(torch.int64)
    has_pos = npos > 0
    k0, k1, o0, o1 = seed & _MASK32, seed >> 32, offset & _MASK32, offset >> 32
    j = torch.arange(C, device=dev)
    col_words = philox4x32_10(_COLUMN_COUNTER, j >> 2, o0, o1, k0, k1)
    col_draw = _uniform24(_pick_word(col_words, j & 3))
    keep_column = has_pos | (col_draw < torch.tensor(empty_keep, dtype=torch.float32, device=dev))
    if neg_ratio is None:
        keep_neg = torch.ones(C, dtype=torch.float32, device=dev)
    else:
        # Float32, multiply then divide: the kernels' exact sequence of roundings.
        ratio = torch.tensor(neg_ratio, dtype=torch.float32, device=dev)
        keep_neg = torch.where(has_pos, ratio * npos.to(torch.float32) / nneg.to(torch.float32), 1.0)
        keep_neg = torch.clamp(keep_neg, max=1.0)
    needs_draw = has_pos & (keep_neg < 1)
    # One call per (group of four global rows, class); its four words are the four rows' draws.
    g0, g1 = row_start >> 2, (row_start + B + 3) >> 2
    groups = torch.arange(g0, g1, device=dev).unsqueeze(1)
    words = philox4x32_10(groups, j.unsqueeze(0), o0, o1, k0, k1)
    draws = torch.stack(words, 1).reshape(4 * (g1 - g0), C)  # row 4 * g + word
    entry_draw = _uniform24(draws[row_start - 4 * g0:row_start - 4 * g0 + B])
    pos = _is_positive(y, pos_threshold)
    keep_in_pos_class = pos | ~needs_draw | (entry_draw < keep_neg)
    mask = torch.where(has_pos, keep_in_pos_class, keep_column) & (y != -1)
    return mask, keep_column


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def _ssl_terms(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed,
               offset, row_start):
    """The pieces of the loss in float64: logits z, keep mask, weights w, the softplus factors
    a = eta y and b = 1 - y, valid targets, kept columns."""
    y = _normalized_targets(logits.dtype, targets)
    if counts is None:
        counts = sampled_sigmoid_loss_counts(targets, pos_threshold)
    _raise_first_bad_target(y)
    mask, kept = sampled_sigmoid_keep_mask(targets, counts, pos_threshold, neg_ratio, empty_keep, seed, offset,
                                           row_start, logits.dtype)
    has_pos = counts[0] > 0
    cw = class_weight.to(torch.float64)
    w = torch.where(has_pos, cw[0], cw[1]) if cw.dim() == 2 else cw
    eta = pos_weight.to(torch.float64).reshape(-1)
    eta = eta if eta.numel() > 1 else eta.reshape(())
    y = y.to(torch.float64)
    keep = mask & (w != 0)
    return logits.to(torch.float64), keep, w, eta * y, 1 - y, _target_is_valid(y), kept


def _ssl_scale(reduction: str, B: int, C: int) -> float:
    return {"mean": 1.0 / B, "mean_classes": 1.0 / (B * C), "sum": 1.0, "none": 1.0}[reduction]


def _ssl_loss_dtype(logits_dtype: torch.dtype, reduction: str) -> torch.dtype:
    # Reduced losses in float32 whatever the logits' dtype: a float16 sum overflows at 65504.
    return logits_dtype if reduction == "none" else _acc_dtype(logits_dtype)


def sampled_sigmoid_loss(logits: torch.Tensor, targets: torch.Tensor, counts, class_weight: torch.Tensor,
                         pos_weight: torch.Tensor, pos_threshold: float, neg_ratio, empty_keep: float, seed: int,
                         offset: int, row_start: int, reduction: str):
    """(loss, kept) of the sampled weighted sigmoid loss, differentiable in logits.

    counts: (2, C) from sampled_sigmoid_loss_counts, or None to count here. Invalid targets raise
    on the CPU and give NaN (loss and gradient) elsewhere, like the kernels."""
    z, keep, w, a, b, valid, kept = _ssl_terms(logits, targets, counts, class_weight, pos_weight, pos_threshold,
                                               neg_ratio, empty_keep, seed, offset, row_start)
    zs = torch.where(keep, z, 0.0)  # dropped entries never reach softplus, nor its gradient
    ce = torch.where(a != 0, a * _softplus(-zs), 0.0) + torch.where(b != 0, b * _softplus(zs), 0.0)
    elem = torch.where(keep, w * ce, 0.0)
    # NaN value and gradient at invalid targets only (the where keeps NaN out of valid gradients).
    poison = torch.where(valid, 0.0, z) * float("nan")
    elem = torch.where(valid, elem, poison)
    B, C = logits.shape
    loss = elem if reduction == "none" else elem.sum() * _ssl_scale(reduction, B, C)
    return loss.to(_ssl_loss_dtype(logits.dtype, reduction)), kept


def sampled_sigmoid_loss_op(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep,
                            seed, offset, row_start, reduction, compute_grad):
    """The ``fusedembed::sampled_sigmoid_loss`` op: (loss, grad or an empty tensor, kept). The
    gradient is written out (an op kernel runs below autograd): w (b sigmoid(z) - a sigmoid(-z))."""
    loss, kept = sampled_sigmoid_loss(logits.detach(), targets, counts, class_weight, pos_weight, pos_threshold,
                                      neg_ratio, empty_keep, seed, offset, row_start, reduction)
    if not compute_grad:
        return loss, logits.new_empty((0,)), kept
    z, keep, w, a, b, valid, _ = _ssl_terms(logits.detach(), targets, counts, class_weight, pos_weight,
                                            pos_threshold, neg_ratio, empty_keep, seed, offset, row_start)
    zs = torch.where(keep, z, 0.0)
    d = torch.where(b != 0, b * torch.sigmoid(zs), 0.0) - torch.where(a != 0, a * torch.sigmoid(-zs), 0.0)
    grad = torch.where(keep, w * d, 0.0) * _ssl_scale(reduction, *logits.shape)
    grad = torch.where(valid, grad, float("nan"))
    return loss, grad.to(logits.dtype), kept


def sampled_sigmoid_loss_scale_grad_(grad: torch.Tensor, grad_loss: torch.Tensor) -> None:
    grad.mul_(grad_loss.reshape(()).to(_acc_dtype(grad.dtype)))


# ---- mrf_viterbi / crf_viterbi: batched loops over the N positions, in float32 (float64 for float64) ---
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
    """Potts chain-MRF Viterbi: (assignment int64 (B, N), score (B,)). beta: 1 or B values."""
    B, N, M = unary.shape
    dev = unary.device
    u = unary.to(_acc_dtype(unary.dtype))
    be = beta.to(dev, u.dtype).reshape(-1).expand(B)
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
    e = emissions.to(_acc_dtype(emissions.dtype))
    T = transitions.to(dev, e.dtype).expand(B, M, M)
    L = _counts(lengths, B, N, dev)
    word_ok = torch.arange(N, device=dev) < L[:, None]
    bad = (word_ok[:, :, None] & ~_usable(e)).flatten(1).any(1) | (~_usable(T)).flatten(1).any(1)
    for v in (start, end):
        if v is not None:
            bad = bad | (~_usable(v.to(e.dtype))).any()
    if N == 0:
        return torch.empty((B, 0), dtype=torch.long, device=dev), _finish_score(e.new_zeros(B), L, bad)
    zero = bad[:, None]
    e = torch.where(zero[:, :, None] | ~word_ok[:, :, None], 0.0, e)
    T = torch.where(zero[:, :, None], 0.0, T)
    start = None if start is None else torch.where(zero, 0.0, start.to(dev, e.dtype))
    end = None if end is None else torch.where(zero, 0.0, end.to(dev, e.dtype))
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
