"""fusedembed.distributed on two gloo processes: the global batch, its gradient, reduced state."""

import pytest
import torch

from fusedembed import distributed as D
from fusedembed.testing import on_two_gloo_ranks


def _worker(rank):
    torch.manual_seed(0)
    full = torch.randn(5, 3, dtype=torch.float64)
    rows = slice(0, 2) if rank == 0 else slice(2, 5)        # unequal shares
    x = full[rows].clone().requires_grad_(True)
    g = D.all_gather_with_grad(x)
    # A loss that mixes every row with every other, as in-batch negatives do; each rank
    # computes it on the global batch and the per-rank losses are summed, as DDP averages.
    (g @ g.T).square().sum().div(2).backward()
    labels = D.gather_batch(torch.arange(rows.start, rows.stop))
    module = torch.nn.Module()
    module.register_buffer("seen", torch.tensor([1, rank]))
    module.register_buffer("mean", torch.tensor([float(rank)]))
    module.register_buffer("shared", torch.tensor([7]))      # equal everywhere: kept
    D.reduce_state_(module)
    return {"gathered": g.detach(), "grad": x.grad, "labels": labels,
                 "state": {k: v.clone() for k, v in module.state_dict().items()},
                 "world": D.world()}


@pytest.mark.slow
def test_two_ranks_see_the_global_batch_and_train_like_one():
    out = on_two_gloo_ranks(_worker)
    torch.manual_seed(0)
    full = torch.randn(5, 3, dtype=torch.float64).requires_grad_(True)
    (full @ full.T).square().sum().backward()        # one process, global batch, both ranks' halves
    for rank, rows in ((0, slice(0, 2)), (1, slice(2, 5))):
        r = out[rank]
        torch.testing.assert_close(r["gathered"], full.detach())
        torch.testing.assert_close(r["grad"], full.grad[rows])
        assert r["labels"].tolist() == [0, 1, 2, 3, 4]
        assert r["state"]["seen"].tolist() == [2, 1] and r["state"]["mean"].tolist() == [0.5]
        assert r["state"]["shared"].tolist() == [7]
        assert (r["world"].rank, r["world"].size) == (rank, 2)


def test_single_process_is_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert D.all_gather_with_grad(x) is x and D.gather_batch(x) is x
    module = torch.nn.BatchNorm1d(2)
    assert D.reduce_state_(module) is module and D.world() == D.World()


def _bn_worker(rank):
    torch.manual_seed(0)
    full, w = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    bn = D.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(3).double()))
    rows = D.shard_range(6)
    x = full[rows.start:rows.stop].clone().requires_grad_(True)
    # each rank's loss on its rows, summed over ranks as DDP's averaged gradient is (x 2)
    (bn(x) * w[rows.start:rows.stop]).sum().backward()
    loss = torch.nn.Module()
    loss.register_buffer("seen", torch.tensor([rank + 1]))
    return {"rows": (rows.start, rows.stop), "grad": x.grad, "type": type(bn[0]).__name__,
                 "running_var": bn[0].running_var.clone(), "bn_weight_grad": bn[0].weight.grad.clone(),
                 "saved": D.consistent_state_dict(loss)["seen"], "live": loss.seen.clone(),
                 "uneven": tuple(D.shard_range(5))}


@pytest.mark.slow
def test_global_batchnorm_and_consistent_state_on_two_ranks():
    out = on_two_gloo_ranks(_bn_worker)
    torch.manual_seed(0)
    full, w = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(3).double()
    x = full.clone().requires_grad_(True)
    (bn(x) * w).sum().backward()                # one process, the global batch
    assert out[0]["uneven"] == (0, 1, 2) and out[1]["uneven"] == (3, 4)
    for rank in (0, 1):
        r = out[rank]
        lo, hi = r["rows"]
        assert r["type"] == "GlobalBatchNorm" and (lo, hi) == ((0, 3) if rank == 0 else (3, 6))
        torch.testing.assert_close(r["grad"], x.grad[lo:hi])
        torch.testing.assert_close(r["running_var"], bn.running_var)
        assert r["saved"].tolist() == [3] and r["live"].tolist() == [rank + 1]   # the module is untouched
    torch.testing.assert_close(out[0]["bn_weight_grad"] + out[1]["bn_weight_grad"], bn.weight.grad)
