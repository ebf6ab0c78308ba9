"""The ranking loss under DDP (2 gloo processes): S_kl is the global batch's matrix, sentences
of different padded lengths on the two ranks, gradients back to the rank owning each row."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from fusedembed_alignment.score import RankingLoss

ROWS = (slice(0, 2), slice(2, 5))
T = (4, 6)                       # each rank pads its sentences to its own longest


def _data():
    g = torch.Generator().manual_seed(0)
    regions = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    words = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    num_regions = torch.tensor([3, 1, 2, 3, 2])
    lengths = torch.tensor([4, 2, 6, 1, 5])
    return regions, words, num_regions, lengths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        regions, words, nr, ln = _data()
        r = regions[ROWS[rank]].clone().requires_grad_(True)
        w = words[ROWS[rank], :T[rank]].clone().requires_grad_(True)
        loss = RankingLoss()(r, w, nr[ROWS[rank]], ln[ROWS[rank]])
        loss.backward()
        out[rank] = {"loss": float(loss.detach()), "gr": r.grad.clone(), "gw": w.grad.clone()}
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_score_the_global_batch():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
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
