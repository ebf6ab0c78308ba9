import itertools
import re

import pytest
import torch

from fusedembed.ops import _reference, alignment_segments, crf_viterbi, mrf_viterbi
from fusedembed.testing import cpu_and_cuda, pytorch_crf_decode

INF = float("inf")
NAN = float("nan")


def assert_same(got, expected, msg="", dtype=torch.float32):
    """Paths exactly, scores exactly (every implementation sums the same values in the same order)."""
    (p, s), (p2, s2) = got, expected
    assert p.dtype == torch.long and s.dtype == dtype, msg
    assert torch.equal(p.cpu(), p2.cpu()), f"{msg}\n{p}\n{p2}"
    torch.testing.assert_close(s.cpu(), s2.cpu(), rtol=0, atol=0, equal_nan=True, msg=msg)


def random_problem(B, N, M, device, ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many equal paths, so the tie rule decides
        unary = torch.randint(-2, 3, (B, N, M), generator=g).float()
        beta = torch.randint(-2, 3, (B,), generator=g).float()
    else:
        unary = torch.randn(B, N, M, generator=g)
        beta = torch.randn(B, generator=g)
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    regions = torch.randint(1, M + 1, (B,), generator=g)
    return unary.to(device), beta.to(device), lengths.to(device), regions.to(device)


# ---------------------------------------------------------------------------- optimality


def mrf_energy(u, beta, path):
    e = u[torch.arange(len(path)), path].sum()
    return e + beta * (path[1:] == path[:-1]).sum()


def brute_force_mrf(u, beta, L, R):
    """Best energy over all R^L assignments, in float64."""
    if L == 0:
        return 0.0
    paths = torch.tensor(list(itertools.product(range(R), repeat=L)))
    e = u[:L].double()[torch.arange(L), paths].sum(1) + beta * (paths[:, 1:] == paths[:, :-1]).sum(1)
    return e.max().item()


def test_mrf_brute_force_optimal():
    g = torch.Generator().manual_seed(1)
    checked = 0
    for N, M in [(1, 1), (1, 4), (3, 1), (4, 2), (5, 3), (6, 4), (6, 3)]:
        B = 12
        unary = torch.randn(B, N, M, generator=g) * 2
        beta = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.0, 0.3, 1.0, 2.5, 6.0, -0.7, 0.9, 40.0])
        lengths = torch.randint(0, N + 1, (B,), generator=g)
        regions = torch.randint(1, M + 1, (B,), generator=g)
        path, score = mrf_viterbi(unary, beta, lengths, regions)
        for b in range(B):
            L, R = int(lengths[b]), int(regions[b])
            best = brute_force_mrf(unary[b], beta[b].item(), L, R)
            assert score[b].item() == pytest.approx(best, abs=1e-4)
            p = path[b]
            assert (p[L:] == -1).all() and ((p[:L] >= 0) & (p[:L] < R)).all()
            if L:
                assert mrf_energy(unary[b].double(), beta[b].item(), p[:L]).item() == pytest.approx(best, abs=1e-4)
            checked += 1
    assert checked == 84


def test_crf_brute_force_optimal():
    g = torch.Generator().manual_seed(2)
    for N, M in [(1, 3), (4, 2), (5, 3), (6, 4)]:
        B = 6
        em = torch.randn(B, N, M, generator=g)
        T = torch.randn(M, M, generator=g)
        start, end = torch.randn(M, generator=g), torch.randn(M, generator=g)
        lengths = torch.randint(0, N + 1, (B,), generator=g)
        path, score = crf_viterbi(em, T, lengths, start, end)
        for b in range(B):
            L = int(lengths[b])
            if L == 0:
                assert score[b] == 0 and (path[b] == -1).all()
                continue
            paths = torch.tensor(list(itertools.product(range(M), repeat=L)))
            e = (em[b, :L].double()[torch.arange(L), paths].sum(1) + start.double()[paths[:, 0]]
                 + end.double()[paths[:, -1]] + T.double()[paths[:, :-1], paths[:, 1:]].sum(1))
            assert score[b].item() == pytest.approx(e.max().item(), abs=1e-4)
            p = path[b, :L]
            got = (em[b, :L].double()[torch.arange(L), p].sum() + start[p[0]] + end[p[-1]]
                   + T.double()[p[:-1], p[1:]].sum())
            assert got.item() == pytest.approx(e.max().item(), abs=1e-4)


# ---------------------------------------------------------------------------- reference equality

SHAPES = [(1, 1, 1), (3, 5, 2), (9, 12, 7), (16, 30, 20), (5, 17, 33), (4, 40, 100), (3, 9, 300)]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_mrf_matches_reference(device, shape, ties):
    unary, beta, lengths, regions = random_problem(*shape, device, ties=ties, seed=sum(shape))
    assert_same(mrf_viterbi(unary, beta, lengths, regions), _reference.mrf_viterbi(unary, beta, lengths, regions))
    b0 = beta[0].item()
    assert_same(mrf_viterbi(unary, b0), _reference.mrf_viterbi(unary, torch.tensor(b0)), "defaults")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_crf_matches_reference(device, shape, ties):
    B, N, M = shape
    em, _, lengths, _ = random_problem(B, N, M, device, ties=ties, seed=sum(shape) + 1)
    g = torch.Generator().manual_seed(7)
    make = (lambda *s: torch.randint(-2, 3, s, generator=g).float()) if ties else (lambda *s: torch.randn(*s, generator=g))
    T, Tb, start, end = make(M, M), make(B, M, M), make(M), make(M)
    T, Tb, start, end = T.to(device), Tb.to(device), start.to(device), end.to(device)
    assert_same(crf_viterbi(em, T, lengths, start, end), _reference.crf_viterbi(em, T, lengths, start, end))
    assert_same(crf_viterbi(em, Tb, lengths), _reference.crf_viterbi(em, Tb, lengths), "batched")


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_long_sentences_match_reference(device):
    # On CUDA these take the global-memory scratch (MRF scores and step words; CRF uint16
    # backpointers); on the CPU the same per-sentence buffers as every other shape.
    unary, beta, lengths, regions = random_problem(3, 1200, 300, device, seed=14)
    lengths[0] = 1200
    assert_same(mrf_viterbi(unary, beta, lengths, regions), _reference.mrf_viterbi(unary, beta, lengths, regions))
    em = unary[:, :300, :260].contiguous()
    T = torch.randn(260, 260, device=device)
    lengths = torch.tensor([300, 17, 299], device=device)
    assert_same(crf_viterbi(em, T, lengths), _reference.crf_viterbi(em, T, lengths))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("M", [1, 2, 5, 20, 70])
def test_crf_with_potts_transitions_equals_mrf(device, M):
    unary, beta, lengths, _ = random_problem(11, 13, M, device, ties=True, seed=M)
    eye = torch.eye(M, device=device)
    assert_same(crf_viterbi(unary, beta[:, None, None] * eye, lengths), mrf_viterbi(unary, beta, lengths))
    assert_same(crf_viterbi(unary, 1.0 * eye, lengths), mrf_viterbi(unary, 1.0, lengths), "shared")
    # Padded regions are -inf emissions to the CRF.
    regions = torch.randint(1, M + 1, (11,), device=device)
    masked = unary.masked_fill(torch.arange(M, device=device) >= regions[:, None, None], -INF)
    assert_same(crf_viterbi(masked, beta[:, None, None] * eye, lengths), mrf_viterbi(unary, beta, lengths, regions))


def test_tie_rule_hand_cases():
    # Word 1 on region 1: staying there (1 + beta = 2) ties coming from region 0 (2); staying wins.
    p, s = mrf_viterbi(torch.tensor([[[2.0, 1.0], [0.0, 1.5]]]), 1.0)
    assert p.tolist() == [[1, 1]] and s.item() == 3.5
    # Region 2's best predecessor: regions 0 and 1 tie, the lowest index wins.
    p, s = mrf_viterbi(torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]), 0.0)
    assert p.tolist() == [[0, 2]] and s.item() == 2.0
    # All paths equal: the last state is the lowest index and everything stays.
    p, _ = mrf_viterbi(torch.zeros(1, 4, 3), 0.0)
    assert p.tolist() == [[0, 0, 0, 0]]
    p, _ = crf_viterbi(torch.zeros(1, 4, 3), torch.zeros(3, 3))
    assert p.tolist() == [[0, 0, 0, 0]]


def test_beta_extremes():
    torch.manual_seed(3)
    u = torch.randn(4, 8, 5)
    p, s = mrf_viterbi(u, 0.0)
    torch.testing.assert_close(p, u.argmax(-1))
    torch.testing.assert_close(s, u.amax(-1).sum(-1))
    p, s = mrf_viterbi(u, 1e4)  # one region for the whole sentence
    assert (p == p[:, :1]).all()
    torch.testing.assert_close(s, u.sum(1).amax(-1) + 7e4)
    p, _ = mrf_viterbi(u, -1e4)  # never two consecutive words on one region
    assert (p[:, 1:] != p[:, :-1]).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_inputs(device, dtype):
    unary, beta, lengths, regions = random_problem(20, 15, 12, device, seed=5)
    low = unary.to(dtype)
    assert_same(mrf_viterbi(low, beta, lengths, regions), mrf_viterbi(low.float(), beta, lengths, regions))
    T = torch.randn(12, 12, device=device)
    assert_same(crf_viterbi(low, T, lengths), crf_viterbi(low.float(), T, lengths))
    assert_same(crf_viterbi(low, T, lengths), _reference.crf_viterbi(low, T, lengths), "reference")


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_empty_and_zero_lengths(device):
    p, s = mrf_viterbi(torch.randn(0, 5, 3, device=device), 1.0)
    assert p.shape == (0, 5) and s.shape == (0,)
    p, s = mrf_viterbi(torch.randn(3, 0, 3, device=device), 1.0)
    assert p.shape == (3, 0) and s.tolist() == [0, 0, 0]
    p, s = crf_viterbi(torch.randn(2, 4, 3, device=device), torch.randn(3, 3, device=device), torch.tensor([0, 2], device=device))
    assert s[0] == 0 and (p[0] == -1).all() and (p[1, 2:] == -1).all() and (p[1, :2] >= 0).all()


# ---------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_finite_values(device):
    torch.manual_seed(4)
    u = torch.randn(5, 6, 4, device=device)
    lengths = torch.tensor([6, 3, 6, 6, 0], device=device)
    regions = torch.tensor([4, 4, 2, 4, 4], device=device)
    clean = mrf_viterbi(u, 0.5, lengths, regions)
    dirty = u.clone()
    dirty[0, 2, 1] = NAN        # used: sentence 0 is NaN / -1
    dirty[1, 4, 0] = NAN        # past length 3: ignored
    dirty[2, 1, 3] = INF        # padded region of sentence 2: ignored
    dirty[3, 5, 2] = INF        # used +inf: NaN
    dirty[4, 0, 0] = NAN        # length 0: ignored
    p, s = mrf_viterbi(dirty, 0.5, lengths, regions)
    assert torch.isnan(s[[0, 3]]).all() and (p[[0, 3]] == -1).all()
    assert_same((p[[1, 2, 4]], s[[1, 2, 4]]), (clean[0][[1, 2, 4]], clean[1][[1, 2, 4]]))
    assert_same((p, s), _reference.mrf_viterbi(dirty, torch.tensor(0.5), lengths, regions), "reference")
    # -inf forbids a pair; when everything is forbidden the score is -inf.
    forbid = u.clone()
    forbid[:, :, 0] = -INF
    p, s = mrf_viterbi(forbid, 0.5)
    assert (p != 0).all() and torch.isfinite(s).all()
    p, s = mrf_viterbi(torch.full((2, 3, 2), -INF, device=device), 0.5)
    assert (s == -INF).all() and p.tolist() == [[0, 0, 0]] * 2
    # beta: NaN / +inf make every sentence NaN (even empty ones); -inf forbids staying.
    for bad in (NAN, INF):
        p, s = mrf_viterbi(u, bad, lengths)
        assert torch.isnan(s).all() and (p == -1).all()
    p, s = mrf_viterbi(u, torch.tensor([0.0, NAN, 1.0, 1.0, 1.0], device=device))
    assert torch.isnan(s[1]) and torch.isfinite(s[[0, 2, 3, 4]]).all()
    p, _ = mrf_viterbi(u, -INF)
    assert (p[:, 1:] != p[:, :-1]).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_crf_forbidden_transitions_and_nan(device):
    torch.manual_seed(5)
    em = torch.randn(6, 10, 3, device=device)
    T = torch.zeros(3, 3, device=device)
    T[0, 2] = -INF  # BIO-style constraint: never 0 -> 2
    p, s = crf_viterbi(em, T)
    assert torch.isfinite(s).all() and not ((p[:, :-1] == 0) & (p[:, 1:] == 2)).any()
    assert_same((p, s), _reference.crf_viterbi(em, T))
    Tb = torch.zeros(6, 3, 3, device=device)
    Tb[2, 1, 1] = NAN
    p, s = crf_viterbi(em, Tb, torch.tensor([10, 10, 0, 10, 10, 10], device=device))
    assert torch.isnan(s[2]) and (p[2] == -1).all() and torch.isfinite(s[[0, 1, 3, 4, 5]]).all()
    T[1, 1] = INF
    _, s = crf_viterbi(em, T)
    assert torch.isnan(s).all()
    _, s = crf_viterbi(em, torch.zeros(3, 3, device=device), end=torch.tensor([0.0, NAN, 0.0], device=device))
    assert torch.isnan(s).all()


# ---------------------------------------------------------------------------- pytorch-crf mapping


def test_matches_pytorch_crf_decode_semantics():
    torch.manual_seed(6)
    N, B, M = 9, 7, 5
    em = torch.randn(N, B, M)
    lengths = torch.tensor([9, 1, 4, 9, 6, 2, 8])
    mask = torch.arange(N)[:, None] < lengths[None]
    T, start, end = torch.randn(M, M), torch.randn(M), torch.randn(M)
    expected = pytorch_crf_decode(em, mask, T, start, end)
    path, _ = crf_viterbi(em.transpose(0, 1), T, mask.sum(0), start, end)
    assert [path[b, : lengths[b]].tolist() for b in range(B)] == expected


# ---------------------------------------------------------------------------- segments


def test_alignment_segments():
    a = torch.tensor([[0, 0, 1, 1, 1, 0, -1], [2, 2, 2, -1, -1, -1, -1], [-1] * 7, [3, 3, 3, 3, 1, 1, 1]])
    assert alignment_segments(a) == [[(0, 2, 0), (2, 5, 1), (5, 6, 0)], [(0, 3, 2)], [], [(0, 4, 3), (4, 7, 1)]]
    assert alignment_segments(a, torch.tensor([3, 3, 0, 5])) == [[(0, 2, 0), (2, 3, 1)], [(0, 3, 2)], [], [(0, 4, 3), (4, 5, 1)]]
    rows = alignment_segments(a, as_tensor=True)
    assert rows.tolist() == [[0, 0, 2, 0], [0, 2, 5, 1], [0, 5, 6, 0], [1, 0, 3, 2], [3, 0, 4, 3], [3, 4, 7, 1]]
    assert alignment_segments(torch.empty(2, 0, dtype=torch.long)) == [[], []]
    # Round trip: the segments rebuild the decoded assignment.
    unary, beta, lengths, regions = random_problem(8, 20, 6, "cpu", seed=9)
    path, _ = mrf_viterbi(unary, beta, lengths, regions)
    rebuilt = torch.full_like(path, -1)
    for b, segs in enumerate(alignment_segments(path, lengths)):
        for s, e, r in segs:
            rebuilt[b, s:e] = r
    assert torch.equal(rebuilt, path)


def test_viterbi_aligner_module():
    from fusedembed.nn import ViterbiAligner

    torch.manual_seed(8)
    regions, words = torch.randn(3, 5, 16), torch.randn(3, 9, 16)
    out = ViterbiAligner(beta=1.5)(regions, words, lengths=torch.tensor([9, 4, 0]))
    path, score = mrf_viterbi(words @ regions.transpose(1, 2), 1.5, torch.tensor([9, 4, 0]))
    assert torch.equal(out.assignment, path) and torch.equal(out.score, score)
    assert out.segments == alignment_segments(path)
    single = ViterbiAligner(beta=1.5)(regions[0], words[0])
    assert torch.equal(single.assignment, path[0]) and single.segments == alignment_segments(path[:1])[0]


# ---------------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    unary, beta, lengths, regions = random_problem(4, 6, 5, device, seed=10)
    torch.library.opcheck(torch.ops.fusedembed.mrf_viterbi.default, (unary, beta, lengths, regions))
    torch.library.opcheck(torch.ops.fusedembed.mrf_viterbi.default, (unary.half(), beta[0], None, None))
    T = torch.randn(5, 5, device=device)
    torch.library.opcheck(torch.ops.fusedembed.crf_viterbi.default, (unary, T, lengths, T[0], T[1]))
    torch.library.opcheck(torch.ops.fusedembed.crf_viterbi.default, (unary, torch.randn(4, 5, 5, device=device)))


def test_compile_fullgraph_and_meta():
    def decode(u, beta, lengths, T):
        p, s = mrf_viterbi(u, beta, lengths)
        q, r = crf_viterbi(u, T, lengths)
        return p, s + r, q

    unary, beta, lengths, _ = random_problem(6, 7, 4, "cpu", seed=11)
    T = torch.randn(4, 4)
    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(unary, beta, lengths, T), decode(unary, beta, lengths, T)):
        assert torch.equal(a, b)
    p, s = mrf_viterbi(torch.empty(3, 8, 5, device="meta"), torch.empty(3, device="meta"))
    assert p.shape == (3, 8) and p.dtype == torch.long and s.shape == (3,) and s.device.type == "meta"


def test_inputs_are_detached():
    u = torch.randn(2, 4, 3, requires_grad=True)
    _, s = mrf_viterbi(u * 2, 1.0)
    assert not s.requires_grad


# ---------------------------------------------------------------------------- bad input

U = torch.zeros(3, 5, 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mrf_viterbi(torch.zeros(5, 4), 1.0), "mrf_viterbi: unary must be (B, N, M), got a 2-d tensor of shape [5, 4]"),
        (lambda: mrf_viterbi(U.long(), 1.0), "mrf_viterbi: unary must be float32, float16, bfloat16 or float64, got Long"),
        (lambda: mrf_viterbi(torch.zeros(3, 5, 0), 1.0), "mrf_viterbi: unary must have 1 to 65535 states (M), got shape [3, 5, 0]"),
        (lambda: mrf_viterbi(U, torch.ones(2)), "mrf_viterbi: beta must be a float, a 1-element tensor or have shape (B,) = (3,), got shape [2]"),
        (lambda: mrf_viterbi(U, torch.ones(3, dtype=torch.long)), "mrf_viterbi: beta must be a floating tensor, got Long"),
        (lambda: mrf_viterbi(U, "1"), "mrf_viterbi: beta must be a float or a tensor, got str"),
        (lambda: mrf_viterbi(U, 1.0, torch.tensor([5, 6, 0])), "mrf_viterbi: lengths must be in [0, N] = [0, 5], got 6"),
        (lambda: mrf_viterbi(U, 1.0, torch.tensor([5, -1, 0])), "mrf_viterbi: lengths must be in [0, N] = [0, 5], got -1"),
        (lambda: mrf_viterbi(U, 1.0, torch.tensor([5.0, 1.0, 0.0])), "mrf_viterbi: lengths must be an integer tensor, got Float"),
        (lambda: mrf_viterbi(U, 1.0, torch.tensor([5, 1])), "mrf_viterbi: lengths must have shape (B,) = (3,), got shape [2]"),
        (lambda: mrf_viterbi(U, 1.0, None, torch.tensor([1, 0, 2])), "mrf_viterbi: num_regions must be in [1, M] = [1, 4], got 0"),
        (lambda: mrf_viterbi(U, 1.0, None, torch.tensor([1, 5, 2])), "mrf_viterbi: num_regions must be in [1, M] = [1, 4], got 5"),
        (lambda: crf_viterbi(U, torch.zeros(4, 5)), "crf_viterbi: transitions must be (M, M) = (4, 4) or (B, M, M) = (3, 4, 4), got shape [4, 5]"),
        (lambda: crf_viterbi(U, torch.zeros(2, 4, 4)), "crf_viterbi: transitions must be (M, M) = (4, 4) or (B, M, M) = (3, 4, 4), got shape [2, 4, 4]"),
        (lambda: crf_viterbi(U, torch.zeros(4, 4, dtype=torch.int32)), "crf_viterbi: transitions must be a floating tensor, got Int"),
        (lambda: crf_viterbi(U, torch.zeros(4, 4), start=torch.zeros(3)), "crf_viterbi: start must have shape (M,) = (4,), got shape [3]"),
        (lambda: crf_viterbi(U, torch.zeros(4, 4), end=torch.zeros(1, 4)), "crf_viterbi: end must have shape (M,) = (4,), got shape [1, 4]"),
        (lambda: crf_viterbi(U, torch.zeros(4, 4), [6, 0, 0]), "crf_viterbi: lengths must be in [0, N] = [0, 5], got 6"),
        (lambda: crf_viterbi(U.bool(), torch.zeros(4, 4)), "crf_viterbi: emissions must be float32, float16, bfloat16 or float64, got Bool"),
    ],
)
@pytest.mark.extension
def test_bad_input_is_named(call, message):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=re.escape(message)):
        call()


def test_start_and_end_must_be_tensors():
    with pytest.raises(TypeError, match=re.escape("crf_viterbi: start must be a (M,) tensor or None, got list")):
        crf_viterbi(U, torch.zeros(4, 4), start=[0.0] * 4)
    with pytest.raises(TypeError, match=re.escape("crf_viterbi: end must be a (M,) tensor or None, got tuple")):
        crf_viterbi(U, torch.zeros(4, 4), end=(0.0,) * 4)


@pytest.mark.cuda
def test_devices_must_match():
    u = torch.zeros(3, 5, 4, device="cuda")
    with pytest.raises(RuntimeError, match="mrf_viterbi: beta is on cpu but unary is on cuda:0"):
        mrf_viterbi(u, torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="mrf_viterbi: lengths is on cpu but unary is on cuda:0"):
        mrf_viterbi(u, 1.0, torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="crf_viterbi: transitions is on cpu but emissions is on cuda:0"):
        crf_viterbi(u, torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="crf_viterbi: start is on cpu but emissions is on cuda:0"):
        crf_viterbi(u, torch.zeros(4, 4, device="cuda"), start=torch.zeros(4))


@pytest.mark.cuda
def test_cuda_out_of_range_counts_give_nan_rows():
    u = torch.randn(4, 5, 3, device="cuda")
    p, s = mrf_viterbi(u, 1.0, torch.tensor([5, 6, -1, 2], device="cuda"), torch.tensor([3, 1, 2, 0], device="cuda"))
    assert torch.isfinite(s[0]) and torch.isnan(s[1:]).all() and (p[1:] == -1).all()
    p, s = crf_viterbi(u, torch.zeros(3, 3, device="cuda"), torch.tensor([5, 6, -1, 2], device="cuda"))
    assert torch.isfinite(s[[0, 3]]).all() and torch.isnan(s[1:3]).all() and (p[1:3] == -1).all()


# Shapes past the 48 KiB shared-memory budget of a block (csrc/cuda/mrf_viterbi_kernel.cu), so the
# backpointers (and, for the CRF, the transitions) move to fewer groups per block, then to global memory.
@pytest.mark.cuda
@pytest.mark.parametrize("B, N, M", [
    (300, 30, 20), (257, 16, 100), (64, 33, 5), (70, 19, 13), (40, 25, 256), (9, 7, 1000),  # shared
    (6, 2000, 100),   # mrf step words 40 KB: one warp per block; crf backpointers global
    (5, 7000, 20),    # mrf step words 56 KB: global; crf backpointers global
    (3, 3000, 300),   # mrf scores and step words in global; crf uint16 backpointers in global
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_equals_cpu(B, N, M, dtype):
    unary, beta, lengths, regions = random_problem(B, N, M, "cpu", ties=M < 50, seed=B + N + M)
    lengths[0] = N
    unary = unary.to(dtype)
    cpu = mrf_viterbi(unary, beta, lengths, regions)
    assert_same(mrf_viterbi(unary.cuda(), beta.cuda(), lengths.cuda(), regions.cuda()), cpu, "mrf")
    if N * M * M > 5e7:
        return  # the CPU CRF would be slow; covered by the smaller shapes
    T = torch.randint(-2, 3, (M, M)).float() if M < 50 else torch.randn(M, M)
    start = torch.randn(M)
    cpu = crf_viterbi(unary, T, lengths, start)
    assert_same(crf_viterbi(unary.cuda(), T.cuda(), lengths.cuda(), start.cuda()), cpu, "crf")
    Tb = torch.randn(B, M, M)
    cpu = crf_viterbi(unary, Tb, lengths)
    assert_same(crf_viterbi(unary.cuda(), Tb.cuda(), lengths.cuda()), cpu, "crf batched")


@pytest.mark.cuda
def test_cuda_crf_large_m_global_paths():
    # M = 300: transitions (352 KB) read in place, uint16 backpointers; long N pushes them to global.
    unary, _, lengths, _ = random_problem(4, 400, 300, "cpu", seed=12)
    T = torch.randn(300, 300)
    assert_same(crf_viterbi(unary.cuda(), T.cuda(), lengths.cuda()), crf_viterbi(unary, T, lengths))


# ---------------------------------------------------------------------------- float64


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float64_decodes_in_double(device):
    # 1e-12 apart: one state in double, a tie in float32 (where the tie rule would pick state 0).
    u = torch.tensor([[[1.0, 1.0 + 1e-12], [0.5, 0.5]]], dtype=torch.float64, device=device)
    path, score = mrf_viterbi(u, 0.25)
    assert path.tolist() == [[1, 1]] and score.dtype == torch.float64
    assert score.item() == (1.0 + 1e-12) + 0.25 + 0.5
    path, score = crf_viterbi(u, torch.zeros(2, 2, dtype=torch.float64, device=device))
    assert path.tolist() == [[1, 0]] and score.item() == (1.0 + 1e-12) + 0.5


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float64_matches_reference_and_pytorch_crf(device):
    unary, beta, lengths, regions = random_problem(7, 9, 6, device, seed=14)
    unary, beta = unary.double(), beta.double()
    f64 = dict(dtype=torch.float64)
    assert_same(mrf_viterbi(unary, beta, lengths, regions),
                _reference.mrf_viterbi(unary, beta, lengths, regions), "mrf", **f64)
    T, start, end = torch.randn(3, 6, 6, dtype=torch.float64, device=device).unbind(0)
    start, end = start[0], end[0]
    got = crf_viterbi(unary, T, lengths, start, end)
    assert_same(got, _reference.crf_viterbi(unary, T, lengths, start, end), "crf", **f64)
    lengths = lengths.clamp(min=1)  # pytorch-crf needs each mask's first step on
    got = crf_viterbi(unary, T, lengths, start, end)
    mask = torch.arange(9, device=device) < lengths[:, None]
    expected = pytorch_crf_decode(unary.cpu().transpose(0, 1), mask.cpu().t(), T.cpu(), start.cpu(), end.cpu())
    assert [row[:n].tolist() for row, n in zip(got[0].cpu(), lengths.tolist())] == expected
