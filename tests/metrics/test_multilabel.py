import numpy as np
import pytest
import torch

from fusedembed.metrics import average_precision, multilabel_class_ap, multilabel_map, multilabel_topk


def test_topk_hand_case():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    targets = torch.tensor([[1, 0, 1, 0, 0, 1],
                            [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    out = multilabel_topk(scores, targets, ks=(2, 5))
    # Image 0: top2 = {0, 1}: 1 hit -> P 1/2, R 1/3, F1 0.4; top5: 2 hits -> P 2/5 R 2/3 F1 .5
    # Image 1: top2 = {5, 4}: 0 hits -> 0, 0, 0; top5 excludes class 0 -> 0.
    assert out["p@2"] == pytest.approx(25.0)
    assert out["r@2"] == pytest.approx(100 / 6)
    assert out["f1@2"] == pytest.approx(20.0)
    assert out["p@5"] == pytest.approx(20.0)
    assert out["r@5"] == pytest.approx(100 / 3)
    assert out["f1@5"] == pytest.approx(25.0)
    assert out["num_images"] == 2


def test_topk_ties_soft_targets_ignore_and_empty_rows():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                           [0.5, 0.5, 0.5, 0.5],
                           [0.3, 0.2, 0.1, 0.0]])
    targets = torch.tensor([[0.9, 0.0, 0.0, 0.0],       # soft positive (≥ 0.5)
                            [0.0, 0.0, 0.0, 0.0],       # no positive: left out
                            [-1.0, 0.8, 0.3, 0.0]])     # class 0 ignored, 0.3 is negative
    pess = multilabel_topk(scores, targets, ks=(1, 2))
    # Image 0: tied top-3; pessimistic puts its positive last -> no hit at k=1, 2.
    # Image 2: ignored class 0 dropped -> ranking 1 (pos), 2, 3 -> hit at 1.
    assert pess["num_images"] == 2
    assert pess["p@1"] == 50.0 and pess["r@2"] == 50.0
    opt = multilabel_topk(scores, targets, ks=(1,), ties="optimistic")
    assert opt["p@1"] == 100.0 and opt["f1@1"] == 100.0


def brute_ap(scores, rel):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], rel[i]))   # pessimistic
    hits, total = 0, 0.0
    for pos, i in enumerate(order, 1):
        if rel[i]:
            hits += 1
            total += hits / pos
    return total / hits


def test_map_hand_and_brute():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=torch.float32)
    # Class 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class 1 has none: left out.
    out = multilabel_map(scores, targets)
    assert out == {"map": pytest.approx(100 * 5 / 6), "num_classes": 1.0}
    rng = np.random.default_rng(4)
    s = rng.integers(0, 4, size=(30, 7)).astype(np.float32)       # many ties
    t = (rng.random((30, 7)) < 0.3).astype(np.float32)
    want = np.mean([brute_ap(s[:, c], t[:, c]) for c in range(7) if t[:, c].any()])
    assert multilabel_map(torch.tensor(s), torch.tensor(t))["map"] == pytest.approx(100 * want)
    ap = average_precision(torch.tensor([[3.0, 3.0, 1.0]]), torch.tensor([[True, False, True]]),
                           ties="optimistic")
    assert ap.item() == pytest.approx((1 + 2 / 3) / 2)


def test_class_ap_and_map_over_a_class_subset():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.9, 0.4], [0.7, 0.3, 0.2], [0.6, 0.4, 0.1]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    ap = multilabel_class_ap(scores, targets)
    # class 0: ranks 1, 3 -> (1 + 2/3) / 2; class 1: its positive (0.3) ranks 3rd -> 1/3; class 2: none
    assert ap[:2].tolist() == pytest.approx([100 * 5 / 6, 100 / 3]) and torch.isnan(ap[2])
    assert multilabel_map(scores, targets, classes=[1, 2]) == {"map": pytest.approx(100 / 3), "num_classes": 1.0}
    assert multilabel_map(scores, targets, classes=torch.tensor([True, True, False]))["map"] == \
        pytest.approx(100 * (5 / 6 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="no class .* has a positive"):
        multilabel_map(scores, targets, classes=[2])


def test_errors():
    with pytest.raises(ValueError, match="same \\(N, C\\) shape"):
        multilabel_topk(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no image has a positive"):
        multilabel_topk(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        multilabel_map(torch.full((2, 3), float("nan")), torch.ones(2, 3))


def test_cutoffs_nan_targets_and_threshold_are_refused():
    s, t = torch.rand(3, 5), torch.ones(3, 5)
    with pytest.raises(ValueError, match=r"ks must be integers >= 1, got \(0,\)"):
        multilabel_topk(s, t, ks=(0,))                       # was p@0 = nan
    # The docs say entries < 0 are ignored; NaN used to be ignored silently too.
    t[0, 1] = float("nan")
    for fn in (multilabel_topk, multilabel_map):
        with pytest.raises(ValueError, match=r"targets contains NaN at index \(0, 1\)"):
            fn(s, t)
    for threshold in (0.0, -2.0, float("nan")):              # would make the ignored −1 positive
        with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
            multilabel_topk(s, torch.ones(3, 5), threshold=threshold)
    with pytest.raises(ValueError, match="scores contain NaN"):
        average_precision(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))
