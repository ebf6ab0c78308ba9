import pytest
import torch

from fusedembed.metrics import (
    chance_retrieval_metrics,
    coco_retrieval,
    retrieval_metrics,
    score_coco_retrieval,
    score_retrieval_metrics,
    score_retrieval_ranks,
)


def test_score_matrix_metrics_equal_the_embedding_ones_for_dot_products():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(10, 4, generator=g), torch.randn(30, 4, generator=g)
    txt_to_img = torch.arange(10).repeat_interleave(3)
    S = img @ txt.t()
    assert score_retrieval_metrics(S, txt_to_img) == retrieval_metrics(img, txt, txt_to_img)
    assert score_coco_retrieval(S, txt_to_img, folds=2) == coco_retrieval(img, txt, txt_to_img, folds=2)


def test_score_ranks_hand_case_and_pessimistic_ties():
    # Image 0 owns captions 0, 1; image 1 owns caption 2.
    S = torch.tensor([[0.1, 0.9, 0.5],
                      [0.7, 0.2, 0.3]])
    i2t, t2i = score_retrieval_ranks(S, [0, 0, 1])
    assert i2t.tolist() == [1, 2]          # image 1: caption 0 (0.7) is ahead of its 0.3
    assert t2i.tolist() == [2, 1, 2]
    i2t, t2i = score_retrieval_ranks(torch.zeros(2, 3), [0, 0, 1])
    assert i2t.tolist() == [2, 3] and t2i.tolist() == [2, 2, 2]


def test_score_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="txt_to_img has 2 entries for 3 captions"):
        score_retrieval_metrics(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="image 1 has no caption"):
        score_retrieval_metrics(torch.zeros(2, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="scores contains NaN"):
        score_retrieval_metrics(torch.full((2, 2), float("nan")), [0, 1])


def test_chance_matches_random_rankings():
    exact = chance_retrieval_metrics(20, 5)
    assert exact["t2i_r1"] == pytest.approx(5.0) and exact["t2i_r10"] == pytest.approx(50.0)
    # i2t R@1 = 5 of 100 captions are the image's.
    assert exact["i2t_r1"] == pytest.approx(5.0)
    g = torch.Generator().manual_seed(0)
    txt_to_img = torch.arange(20).repeat_interleave(5)
    runs = [score_retrieval_metrics(torch.rand(20, 100, generator=g), txt_to_img) for _ in range(300)]
    for key in ("i2t_r5", "i2t_r10", "t2i_r5"):
        assert sum(r[key] for r in runs) / len(runs) == pytest.approx(exact[key], abs=2.0)
    with pytest.raises(ValueError, match="num_images and captions_per_image must be >= 1, got 0 and 5"):
        chance_retrieval_metrics(0, 5)
