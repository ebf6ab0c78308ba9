import pytest
import torch

from fusedembed.metrics import copy_recall, holidays_map, instance_map, trapezoid_ap, ukbench_score
from fusedembed.testing import cpu_and_cuda


def test_trapezoid_ap_hand():
    # Positives at 0-based positions 0 and 2, two positives in all:
    # k=0, r=0: (1 + 1)/2 · 1/2 = 0.5;  k=1, r=2: (1/2 + 2/3)/2 · 1/2 = 7/24.
    rel = torch.tensor([[True, False, True, False]])
    assert trapezoid_ap(rel).item() == pytest.approx(0.5 + 7 / 24)
    # k=0 at r=1: (0/1 + 1/2)/2 · 1.
    assert trapezoid_ap(torch.tensor([[False, True]])).item() == pytest.approx(0.25)


def test_holidays_excludes_the_query():
    # Groups: {0, 1, 2}, {3, 4}. 1-D embeddings make the rankings easy to read.
    x = torch.tensor([[1.0], [0.9], [-0.5], [-1.0], [0.8]])
    groups = [7, 7, 7, 9, 9]
    out = holidays_map(torch.cat([x, torch.ones(5, 1)], 1), groups)
    # Query 0 (scores x·x0 + 1): ranks 1 (1.9), 4 (1.8), 2 (0.5), 3 (0.0) -> positives at
    # positions 0 and 2: AP = 0.5 + 7/24. Query 3: ranks 2 (1.5), 4 (0.2), 1 (0.1), 0 (0.0)
    # -> its positive (4) at position 1: (0/1 + 1/2)/2 · 1 = 0.25.
    assert out["num_queries"] == 2
    assert out["map"] == pytest.approx(100 * ((0.5 + 7 / 24) + 0.25) / 2)
    std = holidays_map(torch.cat([x, torch.ones(5, 1)], 1), groups, ap="standard")
    assert std["map"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)


def test_instance_map_ties_and_exclude():
    q = torch.tensor([[1.0]])
    g = torch.tensor([[1.0], [1.0], [1.0]])
    pess = instance_map(q, g, [1], [1, 0, 1], exclude=[0], ap="standard")
    opt = instance_map(q, g, [1], [1, 0, 1], exclude=[0], ap="standard", ties="optimistic")
    assert pess["map"] == 50.0 and opt["map"] == 100.0       # positive 2 tied with negative 1
    with pytest.raises(ValueError, match="no query has a relevant"):
        instance_map(q, g, [5], [1, 0, 1])
    with pytest.raises(ValueError, match="exclude must"):
        instance_map(q, g, [1], [1, 0, 1], exclude=[3])


def test_ukbench_score():
    # Two groups of 4; group 0 is tight, group 1 is mixed with a member of group 0.
    e = torch.tensor([[1, 0.0]] * 4 + [[0, 1.0]] * 3 + [[1, 0.0]])
    out = ukbench_score(e)
    # Group 0 queries: 5 vectors tie at the top (4 relevant + image 7): pessimistic -> 3.
    # Images 4-6: {4, 5, 6} then ties at 0 where image 7 goes last -> 3. Image 7 (group 1,
    # looks like group 0): 5 tie at the top, the 4 irrelevant first -> 0.
    assert out["ns_score"] == pytest.approx((3 * 4 + 3 * 3 + 0) / 8)
    assert ukbench_score(torch.eye(8).repeat_interleave(4, 0))["ns_score"] == 4.0


def test_copy_recall():
    gallery = torch.eye(4)
    queries = torch.tensor([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.8], [0.5, 0.5, 0, 0]])
    out = copy_recall(queries, gallery, [0, 2, 1], ks=(1, 2))
    # Ranks: 1; 2 (gallery 3 first); 2 (tie 0/1, pessimistic).
    assert out["r1"] == pytest.approx(100 / 3) and out["r2"] == 100.0
    assert out["meanr"] == pytest.approx(5 / 3)


def test_overflowing_scores_and_nan_labels():
    # float32 embeddings near 1e20: scores overflow float32; the metrics must equal those of the
    # same embeddings in float64 (they were NaN-ranked before).
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 4, generator=gen) * 1e20
    groups = torch.arange(12) // 4
    assert not torch.isfinite(x @ x.T).all()
    assert holidays_map(x, groups) == holidays_map(x.double(), groups)
    assert ukbench_score(x) == ukbench_score(x.double())
    assert copy_recall(x, x, torch.arange(12)) == copy_recall(x.double(), x.double(), torch.arange(12))
    nan = float("nan")
    with pytest.raises(ValueError, match=r"query_labels contains NaN at index \(1,\)"):
        instance_map(torch.eye(3), torch.eye(3), [0.0, nan, 1.0], [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"gallery_labels contains NaN"):
        instance_map(torch.eye(3), torch.eye(3), [0.0, 1.0, 1.0], [0.0, nan, 1.0])
    for fn in (ukbench_score, holidays_map):
        with pytest.raises(ValueError, match=r"groups contains NaN at index \(2,\)"):
            fn(torch.eye(4), [0.0, 0.0, nan, 0.0])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_metrics_follow_the_device(device):
    from fusedembed.metrics import multilabel_map, multilabel_topk

    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-1, 2, (24, 3), generator=gen).float()        # ties on purpose
    groups = torch.arange(24) // 4
    targets = (torch.rand(24, 6, generator=gen) < 0.3).float()
    scores = torch.randint(0, 3, (24, 6), generator=gen).float()
    for fn, args in ((holidays_map, (x, groups)), (ukbench_score, (x,)),
                     (copy_recall, (x[:6], x, torch.arange(6))),
                     (multilabel_map, (scores, targets)), (multilabel_topk, (scores, targets))):
        want = fn(*args)
        got = fn(*[a.to(device) for a in args])
        assert got == pytest.approx(want), fn.__name__


def test_listed_map_hand_case_with_junk():
    from fusedembed.metrics import listed_map
    q = torch.tensor([[1.0, 0.0]])
    # gallery scores 0.9, 0.8, 0.7, 0.6: ranking 0, 1, 2, 3
    g = torch.tensor([[0.9, 0.1], [0.8, 0.1], [0.7, 0.1], [0.6, 0.1]])
    # positives 1 and 3; junk 2: ranking without junk is 0, 1, 3 -> positives at 1 and 2
    out = listed_map(q, g, positives=[[1, 3]], junk=[[2]])
    ap = ((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert out["map"] == pytest.approx(100 * ap)
    # without junk, 3 is at position 3: (1/2 + 2/4... trapezoid (1/3 + 2/4)/2
    out = listed_map(q, g, positives=[[1, 3]])
    assert out["map"] == pytest.approx(100 * ((0 / 1 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    # a query with no positive is left out
    out = listed_map(torch.cat([q, q]), g, positives=[[1, 3], []], junk=[[2], []])
    assert out["num_queries"] == 1 and out["map"] == pytest.approx(100 * ap)
    with pytest.raises(ValueError, match="positives\\[0\\]"):
        listed_map(q, g, positives=[[4]])
