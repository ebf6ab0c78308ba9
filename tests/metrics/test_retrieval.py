import math

import numpy as np
import pytest
import torch

from fusedembed.metrics import (
    coco_retrieval,
    label_ranks,
    recall_summary,
    retrieval_metrics,
    retrieval_ranks,
    target_ranks,
)
from fusedembed.testing import cpu_and_cuda


def brute_ranks(img, txt, g, ties):
    """Straightforward reference: sort every ranking with an explicit tie key, find the first
    match. Independent of the counting implementation."""
    s = (img.double() @ txt.double().T).numpy()
    g = np.asarray(g)
    tie = 1 if ties == "pessimistic" else -1          # matches after (pessimistic) equal scores
    i2t = []
    for i in range(len(img)):
        order = sorted(range(len(txt)), key=lambda j: (-s[i, j], tie * (g[j] == i)))
        i2t.append(1 + min(p for p, j in enumerate(order) if g[j] == i))
    t2i = []
    for j in range(len(txt)):
        order = sorted(range(len(img)), key=lambda i: (-s[i, j], tie * (i == g[j])))
        t2i.append(1 + order.index(g[j]))
    return i2t, t2i


def test_hand_case_with_ties():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0],    # image 0's; scores 1, 0, 1 (tie with image 2)
                        [0.0, 1.0],    # image 0's; scores 0, 1, 0
                        [0.0, 1.0],    # image 1's; scores 0, 1, 0
                        [1.0, 1.0]])   # image 2's; scores 1, 1, 1 (three-way tie)
    g = [0, 0, 1, 2]
    i2t, t2i = retrieval_ranks(img, txt, g)
    # i2t — image 0: best caption score 1 (caption 0), caption 3 ties -> pessimistic 2;
    # image 1: best 1 (caption 2), captions 1 and 3 tie -> 3; image 2: best 1 (caption 3),
    # caption 0 ties -> 2. t2i — caption 0: image 2 ties -> 2; caption 1: own score 0, image 1
    # above, image 2 ties -> 3; caption 2: 1; caption 3: three-way tie -> 3.
    assert i2t.tolist() == [2, 3, 2]
    assert t2i.tolist() == [2, 3, 1, 3]
    i2t, t2i = retrieval_ranks(img, txt, g, ties="optimistic")
    assert i2t.tolist() == [1, 1, 1] and t2i.tolist() == [1, 2, 1, 1]
    m = retrieval_metrics(img, txt, g, ks=(1, 2))
    assert m["i2t_r1"] == 0 and m["i2t_r2"] == pytest.approx(200 / 3)
    assert m["t2i_r1"] == 25 and m["t2i_r2"] == 50
    assert m["rsum"] == pytest.approx(200 / 3 + 75)
    assert m["i2t_meanr"] == pytest.approx(7 / 3) and m["t2i_medr"] == 2    # floor(2.5)


def test_constant_embeddings_are_not_perfect():
    m = retrieval_metrics(torch.ones(10, 4), torch.ones(50, 4), torch.arange(50) // 5)
    assert m["i2t_r1"] == 0 and m["t2i_r1"] == 0 and m["t2i_medr"] == 10


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("integer", [True, False])
def test_matches_brute_force_on_random_data(ties, integer):
    gen = torch.Generator().manual_seed(1)
    n, dim = 23, 4
    counts = torch.randint(1, 4, (n,), generator=gen)
    g = torch.repeat_interleave(torch.arange(n), counts)[torch.randperm(int(counts.sum()),
                                                                        generator=gen)]
    if integer:     # small integers: exact scores with many ties
        img = torch.randint(-1, 2, (n, dim), generator=gen).float()
        txt = torch.randint(-1, 2, (len(g), dim), generator=gen).float()
    else:
        img, txt = torch.randn(n, dim, generator=gen), torch.randn(len(g), dim, generator=gen)
    want_i2t, want_t2i = brute_ranks(img, txt, g, ties)
    for block in (1, 7, 1 << 20):          # blocks of 1 row, a few rows, everything
        i2t, t2i = retrieval_ranks(img, txt, g, ties=ties, block=block)
        assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i


def brute_label_ranks(queries, gallery, ql, gl, ties):
    """Sort each ranking with an explicit tie key; 1-based position of the first item that
    shares the query's label."""
    s = (queries.double() @ gallery.double().T).numpy()
    tie = 1 if ties == "pessimistic" else -1
    out = []
    for q in range(len(queries)):
        order = sorted(range(len(gallery)), key=lambda i: (-s[q, i], tie * int(gl[i] == ql[q])))
        out.append(1 + min(p for p, i in enumerate(order) if gl[i] == ql[q]))
    return out


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_identity_labels_match_brute_force(ties):
    # Person search: 23 images of 6 people; a caption matches any image of its person.
    gen = torch.Generator().manual_seed(2)
    n, dim = 23, 4
    person = torch.randint(0, 6, (n,), generator=gen)
    g = torch.cat([torch.arange(n), torch.randint(0, n, (30,), generator=gen)])
    img = torch.randint(-1, 2, (n, dim), generator=gen).float()      # many exact ties
    txt = torch.randint(-1, 2, (len(g), dim), generator=gen).float()
    for block in (1, 7, 1 << 20):
        i2t, t2i = retrieval_ranks(img, txt, g, ties=ties, block=block, image_labels=person)
        assert i2t.tolist() == brute_label_ranks(img, txt, person, person[g], ties)
        assert t2i.tolist() == brute_label_ranks(txt, img, person[g], person, ties)
    by_image = retrieval_metrics(img, txt, g, ties=ties)
    by_person = retrieval_metrics(img, txt, g, ties=ties, image_labels=person)
    assert by_person["t2i_r1"] >= by_image["t2i_r1"] and by_person["i2t_r1"] >= by_image["i2t_r1"]
    assert label_ranks(txt, img, g, torch.arange(n), ties).tolist() == target_ranks(txt, img, g, ties).tolist()


def test_label_ranks_errors():
    with pytest.raises(ValueError, match="query 1 has no gallery item with its label 5"):
        label_ranks(torch.ones(2, 2), torch.ones(3, 2), [0, 5], [0, 1, 1])
    with pytest.raises(ValueError, match="image_labels has 2 entries for 3 items"):
        retrieval_ranks(torch.ones(3, 2), torch.ones(3, 2), [0, 1, 2], image_labels=[0, 1])


def test_recall_summary_and_medians():
    r = torch.tensor([1, 2, 3, 8])
    s = recall_summary(r, ks=(1, 5))
    assert s == {"r1": 25.0, "r5": 75.0, "medr": 2.0, "meanr": 3.5}     # floor(2.5)
    assert recall_summary(r, median="recall")["medr"] == 3.0             # first K: R@K > 50 %
    assert recall_summary(torch.tensor([4, 1, 9]), median="recall")["medr"] == 4.0
    assert recall_summary(torch.tensor([4, 1, 9]))["medr"] == 4.0
    # The authors' definition, literally: smallest K with mean(rank <= K) > 0.5.
    rng = np.random.default_rng(0)
    for _ in range(20):
        ranks = rng.integers(1, 30, size=rng.integers(1, 12))
        first = next(k for k in range(1, 31) if np.mean(ranks <= k) > 0.5)
        assert recall_summary(torch.tensor(ranks), median="recall")["medr"] == first
        assert recall_summary(torch.tensor(ranks))["medr"] == math.floor(np.median(ranks))
    with pytest.raises(ValueError, match="median must be"):
        recall_summary(r, median="mean")


def test_coco_1k_is_mean_of_folds():
    gen = torch.Generator().manual_seed(2)
    img, txt = torch.randn(30, 6, generator=gen), torch.randn(150, 6, generator=gen)
    g = torch.arange(150) // 5
    out = coco_retrieval(img, txt, g, folds=3)
    folds = [retrieval_metrics(img[10 * f:10 * f + 10], txt[50 * f:50 * f + 50],
                               g[50 * f:50 * f + 50] - 10 * f) for f in range(3)]
    for key in folds[0]:
        assert out[f"1k_{key}"] == pytest.approx(sum(m[key] for m in folds) / 3)
    assert {k[3:]: v for k, v in out.items() if k.startswith("5k_")} == \
        retrieval_metrics(img, txt, g)
    with pytest.raises(ValueError, match="equal folds"):
        coco_retrieval(img, txt, g, folds=4)


def test_target_ranks_and_errors():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gal = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert target_ranks(q, gal, [1, 2]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(torch.full((2, 2), float("nan")), torch.ones(2, 2), [0, 1])
    with pytest.raises(ValueError, match="image 1 has no caption"):
        retrieval_ranks(torch.ones(2, 2), torch.ones(2, 2), [0, 0])
    with pytest.raises(ValueError, match=r"txt_to_img values must be in \[0, 2\)"):
        retrieval_ranks(torch.ones(2, 2), torch.ones(2, 2), [0, 2])
    with pytest.raises(ValueError, match="ties must be"):
        retrieval_ranks(torch.ones(2, 2), torch.ones(2, 2), [0, 1], ties="random")
    with pytest.raises(ValueError, match="img dim 2 != txt dim 3"):
        retrieval_ranks(torch.ones(2, 2), torch.ones(2, 3), [0, 1])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("integer", [True, False])
def test_scores_that_overflow_float32_still_rank_exactly(integer, device):
    # Finite float32 embeddings with entries near 1e20: their dot products pass the float32
    # range (inf − inf = NaN, which compares false and once ranked every image's caption first:
    # i2t R@1 = 100). The ranking must be that of the exact (float64) scores.
    gen = torch.Generator().manual_seed(4)
    n, dim = 9, 4
    g = torch.arange(3 * n) // 3
    if integer:     # exact ties at the overflowing scale
        img = torch.randint(-1, 2, (n, dim), generator=gen).float() * 1e20
        txt = torch.randint(-1, 2, (len(g), dim), generator=gen).float() * 1e20
    else:
        img, txt = torch.randn(n, dim, generator=gen) * 1e20, torch.randn(len(g), dim, generator=gen) * 1e20
    img[0] /= 1e20                      # one row that does not overflow: blocks of either kind
    assert not torch.isfinite(img @ txt.T).all()
    for ties in ("pessimistic", "optimistic"):
        want_i2t, want_t2i = brute_ranks(img, txt, g, ties)
        for block in (len(g), 1 << 20):
            i2t, t2i = retrieval_ranks(img.to(device), txt.to(device), g, ties=ties, block=block)
            assert i2t.tolist() == want_i2t and t2i.tolist() == want_t2i
    assert retrieval_metrics(img, txt, g) == retrieval_metrics(img.double(), txt.double(), g)


def test_scores_that_overflow_float64_are_an_error():
    big = torch.full((2, 2), 1e200, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"img · txt scores overflow torch.float64 \(img 0, txt 0\); "
                                         "L2-normalise"):
        retrieval_metrics(big, big, [0, 1])
    with pytest.raises(ValueError, match=r"query · gallery scores overflow torch.float64 \(query 1"):
        target_ranks(torch.tensor([[1.0, 0.0], [1e200, 0.0]], dtype=torch.float64), big, [0, 1],
                     block=2)


def test_cutoffs_and_ranks_are_checked():
    for ks in ((0,), (1, -5), (1.5,), ()):
        with pytest.raises(ValueError, match=r"ks must be integers >= 1, got"):
            recall_summary([1, 2], ks=ks)
    assert recall_summary([1, 2], ks=(np.int64(1),))["r1"] == 50.0
    for ranks in ([0, 1], [1.0, float("nan")], [1.5]):
        with pytest.raises(ValueError, match="ranks must be 1-based integers"):
            recall_summary(torch.tensor(ranks))
    with pytest.raises(ValueError, match=r"image_labels contains NaN at index \(1,\)"):
        retrieval_ranks(torch.ones(2, 2), torch.ones(2, 2), [0, 1], image_labels=[0.0, float("nan")])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_device_and_half_precision(device):
    gen = torch.Generator().manual_seed(3)
    img, txt = torch.randn(40, 8, generator=gen), torch.randn(200, 8, generator=gen)
    g = torch.arange(200) // 5
    want = retrieval_metrics(img, txt, g)
    got = retrieval_metrics(img.to(device), txt.to(device), g.to(device), block=500)
    assert got == pytest.approx(want)
    half = retrieval_metrics(img.to(device).half(), txt.to(device).half(), g)
    assert half["rsum"] == pytest.approx(want["rsum"], abs=15)
