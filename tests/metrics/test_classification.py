import pytest
import torch

from fusedembed.metrics import accuracy_from_ranks, class_ranks, topk_accuracy
from fusedembed.testing import cpu_and_cuda


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_top_k_accuracy_by_hand(device):
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], device=device)
    labels = torch.tensor([1, 1, 0, 2])           # ranks 1, 2, 3, 3 (labels may stay on the CPU)
    assert class_ranks(scores, labels).tolist() == [1, 2, 3, 3]
    assert topk_accuracy(scores, labels, ks=(1, 2, 3, 5)) == {"top1": 25.0, "top2": 50.0, "top3": 100.0,
                                                              "top5": 100.0}
    # Gathered over batches: the same as at once.
    ranks = torch.cat([class_ranks(scores[:3], labels[:3]), class_ranks(scores[3:], labels[3:])])
    assert accuracy_from_ranks(ranks, (1, 2)) == {"top1": 25.0, "top2": 50.0}


def test_ties_and_nan_never_score():
    # Equal scores (a collapsed model): topk listed class 0 first, so every label 0 was correct.
    equal, labels = torch.zeros(4, 3), torch.tensor([0, 0, 1, 2])
    assert topk_accuracy(equal, labels, ks=(1, 3)) == {"top1": 0.0, "top3": 100.0}
    assert topk_accuracy(equal, labels, ks=(1,), ties="optimistic") == {"top1": 100.0}
    # topk ranks NaN above every number: a diverged model scored at NaN rows.
    nan = torch.tensor([[float("nan"), 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"scores contain NaN \(row 0 of 2\)"):
        topk_accuracy(nan, torch.tensor([0, 0]))


def test_bad_arguments_are_named():
    s = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"ks must be integers >= 1, got \(0,\)"):
        topk_accuracy(s, [0, 1, 2], ks=(0,))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 0..4"):
        topk_accuracy(s, [0, 1, 4])
    with pytest.raises(ValueError, match=r"labels contains NaN at index \(1,\)"):
        topk_accuracy(s, [0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="labels has 2 entries for 3 rows"):
        topk_accuracy(s, [0, 1])
    with pytest.raises(ValueError, match=r"scores must be a 2-D float tensor \(N, C\), got torch.int64"):
        topk_accuracy(torch.ones(3, 4, dtype=torch.long), [0, 1, 2])
    with pytest.raises(ValueError, match="ties must be one of"):
        class_ranks(s, [0, 1, 2], ties="random")
    with pytest.raises(ValueError, match="no ranks: the split is empty"):
        accuracy_from_ranks(torch.empty(0))
