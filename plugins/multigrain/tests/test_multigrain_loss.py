"""Margin loss and distance-weighted sampling against the formulas of modules/margin.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from fusedembed_multigrain.loss import (
    MarginLoss,
    distance_weighted_sampling,
    dws_weights,
    margin_loss,
    pairwise_distances,
)


def _unit(b, n, seed=0):
    return F.normalize(torch.randn(b, n, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_dws_weights_match_the_formula():
    x = _unit(6, 8)
    inst = torch.tensor([0, 0, 1, 1, 2, 2])
    w = dws_weights(x, inst)
    n = 8
    d = torch.cdist(x.double(), x.double()).clamp_min(0.5)
    log_w = (2 - n) * d.log() - ((n - 3) / 2) * (1 - d * d / 4).log()
    mask = (inst[:, None] != inst[None, :]) & (d < 1.4)
    expected = torch.where(mask, (log_w - log_w[mask].max()).exp(), torch.zeros_like(d))
    expected = expected / expected.sum(1, keepdim=True)
    rows = mask.any(1)
    torch.testing.assert_close(w[rows].double(), expected[rows], atol=1e-5, rtol=1e-4)
    assert torch.allclose(w.sum(1), torch.ones(6))
    assert (w[inst[:, None] == inst[None, :]] == 0).all()        # never the same instance


def test_far_points_fall_back_to_uniform_and_d_ge_2_is_guarded():
    # Antipodal pairs: d = 2 (1 - d²/4 = 0, the release's NaN) and beyond the 1.4 cutoff.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    inst = torch.tensor([0, 0, 1, 1])
    w = dws_weights(x * 1.0001, inst)                           # rounding pushes d past 2
    assert torch.isfinite(w).all()
    expected = torch.tensor([[0, 0, .5, .5], [0, 0, .5, .5], [.5, .5, 0, 0], [.5, .5, 0, 0]])
    torch.testing.assert_close(w, expected)


def test_pairwise_distances_is_the_released_form():
    x = _unit(5, 4)
    d = pairwise_distances(x)
    assert torch.allclose(d.diagonal(), torch.ones(5))            # + I on the diagonal
    off = ~torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(d[off], torch.cdist(x, x)[off], atol=1e-5, rtol=1e-5)


def test_sampling_pattern_every_positive_pair_once_negatives_without_replacement():
    x = _unit(12, 16, seed=1)
    inst = torch.arange(4).repeat_interleave(3)                  # m = 3 copies of 4 images
    torch.manual_seed(0)
    a, p, n = distance_weighted_sampling(x, inst)
    pairs = sorted(zip(a.tolist(), p.tolist()))
    assert pairs == sorted((i, j) for i in range(12) for j in range(12) if i != j and inst[i] == inst[j])
    assert (inst[a] != inst[n]).all()
    for i in range(12):                                           # len(same) - 1 = 2 distinct negatives
        neg = n[a == i].tolist()
        assert len(neg) == 2 and len(set(neg)) == 2


def test_with_replacement_when_too_few_negatives():
    # 3 copies of image 0, one other image: 2 negatives needed, 1 available.
    x = _unit(4, 8)
    inst = torch.tensor([0, 0, 0, 1])
    a, p, n = distance_weighted_sampling(x, inst, nonzero_loss_cutoff=10.0)
    assert (n[inst[a] == 0] == 3).all()


def test_sampling_follows_the_weights():
    # Anchor 0 with one positive; negatives 2 (w large) and 3 (w ~ 0): 2 is drawn.
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    inst = torch.tensor([0, 0, 1, 2])
    w = dws_weights(x, inst)
    assert w[0, 3] == 0 and w[0, 2] == 1                         # d(0, 3) = 1.414 > 1.4
    for seed in range(5):
        torch.manual_seed(seed)
        a, p, n = distance_weighted_sampling(x, inst)
        assert n[a == 0].tolist() == [2]


@pytest.mark.parametrize("pair_cnt", ["any", "terms"])
def test_margin_loss_formula_with_inactive_terms(pair_cnt):
    # Two triplets with the same positive (d_ap = 0.8: pos term inactive); negatives at 0.5
    # (active) and 3 (inactive): one active term in one triplet under either count.
    x = torch.tensor([[0.0, 0.0], [0.8, 0.0], [0.5, 0.0], [3.0, 0.0]])
    a, p, n = torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3])
    beta = torch.tensor(1.2, requires_grad=True)
    loss = margin_loss(x, a, p, n, beta, 0.2, pair_cnt)
    neg1 = 1.2 - math.sqrt(0.25 + 1e-8) + 0.2
    assert float(loss.detach()) == pytest.approx(neg1, rel=1e-6)
    loss.backward()
    assert float(beta.grad) == pytest.approx(1.0)                # d neg1 / d beta, one active pair


def test_pair_count_any_vs_terms_differ_when_both_terms_are_active():
    x = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.5, 0.0]])
    a, p, n = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    beta = torch.tensor(1.2)
    pos, neg = 1.5 - 1.2 + 0.2, 1.2 - 0.5 + 0.2
    assert float(margin_loss(x, a, p, n, beta, 0.2, "any")) == pytest.approx(pos + neg, rel=1e-5)
    assert float(margin_loss(x, a, p, n, beta, 0.2, "terms")) == pytest.approx((pos + neg) / 2, rel=1e-5)


def test_margin_module_beta_learns_and_no_positive_gives_zero():
    loss = MarginLoss()
    assert isinstance(loss.beta, torch.nn.Parameter) and float(loss.beta.detach()) == pytest.approx(1.2)
    x = _unit(9, 8).requires_grad_()
    out = loss(x, torch.arange(3).repeat_interleave(3))
    out.backward()
    assert out > 0 and loss.beta.grad is not None and x.grad.abs().sum() > 0
    zero = loss(_unit(4, 8), torch.arange(4))                    # m = 1: no positives
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match="pair_cnt must be one of"):
        MarginLoss(pair_cnt="all")


@pytest.mark.cuda
def test_sampling_and_loss_run_on_the_gpu_like_on_the_cpu():
    x = _unit(24, 32, seed=2)
    inst = torch.arange(8).repeat_interleave(3)
    torch.testing.assert_close(dws_weights(x.cuda(), inst.cuda()).cpu(), dws_weights(x, inst), atol=1e-5, rtol=1e-4)
    a, p, n = distance_weighted_sampling(x.cuda(), inst.cuda())
    assert a.is_cuda and (inst.cuda()[a] != inst.cuda()[n]).all()
    beta = torch.tensor(1.2)
    torch.testing.assert_close(margin_loss(x.cuda(), a, p, n, beta.cuda()).cpu(),
                               margin_loss(x, a.cpu(), p.cpu(), n.cpu(), beta), atol=1e-5, rtol=1e-5)
