"""The ranking loss under DDP (2 gloo processes): S_kl is the global batch's matrix, sentences
of different padded lengths on the two ranks, gradients back to the rank owning each row."""

import pytest
import torch
from fusedembed_alignment.score import RankingLoss

from fusedembed.testing import on_two_gloo_ranks

ROWS = (slice(0, 2), slice(2, 5))
T = (4, 6)                       # each rank pads its sentences to its own longest


def _data():
    g = torch.Generator().manual_seed(0)
    regions = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    words = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    num_regions = torch.tensor([3, 1, 2, 3, 2])
    lengths = torch.tensor([4, 2, 6, 1, 5])
    return regions, words, num_regions, lengths


def _worker(rank):
    regions, words, nr, ln = _data()
    r = regions[ROWS[rank]].clone().requires_grad_(True)
    w = words[ROWS[rank], :T[rank]].clone().requires_grad_(True)
    loss = RankingLoss()(r, w, nr[ROWS[rank]], ln[ROWS[rank]])
    loss.backward()
    return {"loss": float(loss.detach()), "gr": r.grad.clone(), "gw": w.grad.clone()}


@pytest.mark.slow
def test_two_ranks_score_the_global_batch():
    out = on_two_gloo_ranks(_worker)
    regions, words, nr, ln = _data()
    regions.requires_grad_(True)
    words.requires_grad_(True)
    loss = RankingLoss()(regions, words, nr, ln)
    # Every rank's loss is the global one; the gradient of each rank's rows is that of the sum
    # of both ranks' losses (DDP's average over ranks then gives the one-process gradient).
    (2 * loss).backward()
    for rank in (0, 1):
        assert out[rank]["loss"] == pytest.approx(float(loss.detach()), rel=1e-9)
        torch.testing.assert_close(out[rank]["gr"], regions.grad[ROWS[rank]])
        torch.testing.assert_close(out[rank]["gw"], words.grad[ROWS[rank], :T[rank]])
