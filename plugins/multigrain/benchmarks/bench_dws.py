"""Distance-weighted sampling + margin loss (forward + backward), on the device vs the release's way.

    python plugins/multigrain/benchmarks/bench_dws.py                  # batch 512 (171 x 3), 2048-d
    python plugins/multigrain/benchmarks/bench_dws.py --quick --device cpu

Implementations:
  fusedembed      fusedembed_multigrain.loss: weights, Gumbel top-k draws and the loss in torch
                  on the embeddings' device (one host sync per batch)
  release_numpy   the release's procedure (modules/margin.py): the weights computed in torch, copied
                  to the host, one np.random.choice(p=w_i, replace=False) per anchor, indices copied
                  back, then the same loss
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "benchmarks"))
from _harness import Case, parser, run_cases  # noqa: E402
from fusedembed_multigrain.loss import distance_weighted_sampling, dws_weights, margin_loss  # noqa: E402


def release_sampling(x, instance, rng):
    """Per-anchor host sampling, as modules/margin.py does it (written here for the comparison)."""
    w = dws_weights(x, instance).cpu().numpy().astype(np.float64)
    inst = instance.cpu().numpy()
    a, p, n = [], [], []
    for i in range(len(inst)):
        same = np.flatnonzero(inst == inst[i])
        row = w[i] / w[i].sum()
        try:
            neg = rng.choice(len(inst), len(same) - 1, p=row, replace=False)
        except ValueError:
            neg = rng.choice(len(inst), len(same) - 1, p=row)
        for j, k in zip((s for s in same if s != i), neg):
            a.append(i)
            p.append(j)
            n.append(k)
    dev = x.device
    return (torch.tensor(a, device=dev), torch.tensor(p, device=dev), torch.tensor(n, device=dev))


def fwd_bwd(sample, x, inst, beta):
    def run():
        xg = x.detach().requires_grad_(True)
        a, p, n = sample(xg, inst)
        margin_loss(xg, a, p, n, beta).backward()
    return run


def make_cases(args):
    shapes = [(48, 64)] if args.quick else [(171 * 3, 2048), (64 * 3, 2048)]
    rng = np.random.default_rng(0)
    cases = []
    for b, d in shapes:
        g = torch.Generator().manual_seed(0)
        x = F.normalize(torch.randn(b, d, generator=g), dim=1).to(args.device)
        inst = torch.arange(b // 3).repeat_interleave(3).to(args.device)
        beta = torch.tensor(1.2, device=args.device)
        cases.append(Case(name=f"B={b} n={d}", params={"B": b, "dim": d}, impls={
            "fusedembed": fwd_bwd(lambda x_, i_: distance_weighted_sampling(x_.detach(), i_), x, inst, beta),
            "release_numpy": fwd_bwd(lambda x_, i_: release_sampling(x_.detach(), i_, rng), x, inst, beta),
        }))
    return cases


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_cases(make_cases(args), args)


if __name__ == "__main__":
    main()
