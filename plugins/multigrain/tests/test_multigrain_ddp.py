"""The margin loss under DDP (2 gloo processes): negatives come from the global batch,
anchors are the rank's own rows, gradients reach the rank that owns each row."""

import pytest
import torch
import torch.nn.functional as F
from fusedembed_multigrain.loss import MarginLoss, distance_weighted_sampling, margin_loss

from fusedembed.testing import on_two_gloo_ranks

# Rank 0: three copies of image 0; rank 1: two copies of image 1. Alone, neither rank has a
# negative; globally, each anchor of rank 0 needs 2 negatives and rank 1 holds exactly 2
# (drawn without replacement: the set is fixed), each anchor of rank 1 needs 1 of 3.
ROWS = (slice(0, 3), slice(3, 5))
INST = torch.tensor([0, 0, 0, 1, 1])


def _x():
    base = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.8, 0.0, 0.4], [0.6, 0.6, 0.3], [0.5, 0.7, 0.2]])
    return F.normalize(base, dim=1)


def _worker(rank):
    torch.manual_seed(rank)
    loss_fn = MarginLoss(pair_cnt="terms", nonzero_loss_cutoff=2.0)
    x = _x()[ROWS[rank]].clone().requires_grad_(True)
    loss = loss_fn(x, INST[ROWS[rank]])
    loss.backward()
    local = MarginLoss(pair_cnt="terms", nonzero_loss_cutoff=2.0, global_sampling=False)
    return {"loss": float(loss.detach()), "grad": x.grad.clone(),
                 "local": float(local(x.detach(), INST[ROWS[rank]]))}


@pytest.mark.slow
def test_two_ranks_sample_negatives_from_the_global_batch():
    out = on_two_gloo_ranks(_worker)
    # One process: rank 0's anchors (its negatives are fixed) plus rank 1's loss on its anchors.
    x = _x().requires_grad_(True)
    beta = torch.tensor(1.2)
    anchors0 = torch.tensor([True, True, True, False, False])
    a, p, n = distance_weighted_sampling(x.detach(), INST, nonzero_loss_cutoff=2.0, anchors=anchors0)
    assert sorted(n.tolist()) == [3, 3, 3, 4, 4, 4]
    loss0 = margin_loss(x, a, p, n, beta, 0.2, "terms")
    assert out[0]["loss"] == pytest.approx(float(loss0.detach()), rel=1e-5)
    assert out[0]["local"] == 0.0 and out[1]["local"] == 0.0      # no negative on one rank alone
    # rank 1's draw (1 negative of 3) replayed with its seed on the same global batch
    torch.manual_seed(1)
    a, p, n = distance_weighted_sampling(x.detach(), INST, nonzero_loss_cutoff=2.0, anchors=~anchors0)
    loss1 = margin_loss(x, a, p, n, beta, 0.2, "terms")
    assert out[1]["loss"] == pytest.approx(float(loss1.detach()), rel=1e-5) and out[1]["loss"] > 0
    # each rank's gradient: both ranks' losses (DDP then averages over the ranks)
    (loss0 + loss1).backward()
    for rank in (0, 1):
        torch.testing.assert_close(out[rank]["grad"], x.grad[ROWS[rank]], atol=1e-6, rtol=1e-5)
