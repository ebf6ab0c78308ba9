"""mrf_viterbi / crf_viterbi side by side with the ways chain decoding is done today.

Implementations per case:
  pytorch-crf loop  pytorch-crf's decode restated (pytorch-crf is not a dependency): a batched
                    O(N*M^2) forward over the steps, then a per-sample Python backtrace with one
                    host sync per step. Only at B=1024, N=30, M=20 (--quick: the first case): it
                    takes about a second a call on a GPU, so pass --repeats 5 there.
  torch loop        fusedembed.ops._reference: batched torch ops in a Python loop over the N steps.
  fusedembed        the kernel.

  python benchmarks/bench_mrf_viterbi.py [--device cuda|cpu] [--quick] [--json out.json]
"""

import torch
from _harness import Case, parser, run_cases

from fusedembed.ops import _reference, crf_viterbi, mrf_viterbi
from fusedembed.testing import pytorch_crf_decode


def mrf_case(B, N, M, device, with_loop):
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(B, N, M, generator=g).to(device)
    lengths = torch.randint(N // 2, N + 1, (B,), generator=g).to(device)
    beta = torch.tensor(0.5, device=device)
    impls = {}
    if with_loop:
        unary_t = unary.transpose(0, 1).contiguous()
        mask = torch.arange(N, device=device)[:, None] < lengths[None]
        T = 0.5 * torch.eye(M, device=device)
        zeros = torch.zeros(M, device=device)
        impls["pytorch-crf loop"] = lambda: pytorch_crf_decode(unary_t, mask, T, zeros, zeros)
    impls["torch loop"] = lambda: _reference.mrf_viterbi(unary, beta, lengths)
    impls["fusedembed"] = lambda: mrf_viterbi(unary, beta, lengths)
    return Case(f"mrf B={B} N={N} M={M}", impls, bytes_moved=unary.numel() * 4 + B * N * 8 + B * 4,
                params=dict(op="mrf_viterbi", B=B, N=N, M=M))


def crf_case(B, N, M, device):
    g = torch.Generator().manual_seed(1)
    em = torch.randn(B, N, M, generator=g).to(device)
    T = torch.randn(M, M, generator=g).to(device)
    start, end = torch.randn(M, generator=g).to(device), torch.randn(M, generator=g).to(device)
    lengths = torch.randint(N // 2, N + 1, (B,), generator=g).to(device)
    impls = {
        "torch loop": lambda: _reference.crf_viterbi(em, T, lengths, start, end),
        "fusedembed": lambda: crf_viterbi(em, T, lengths, start, end),
    }
    return Case(f"crf B={B} N={N} M={M}", impls, bytes_moved=em.numel() * 4 + B * N * 8 + B * 4,
                params=dict(op="crf_viterbi", B=B, N=N, M=M))


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    if args.quick:
        mrf_grid, crf_grid = [(64, 16, 20), (256, 30, 100)], [(64, 16, 20)]
    else:
        mrf_grid = [(B, N, M) for B in (1024, 65536) for N in (16, 30) for M in (20, 100)]
        crf_grid = [(1024, 30, 20), (65536, 30, 20), (1024, 30, 100), (1024, 30, 256)]
    loop_case = mrf_grid[0] if args.quick else (1024, 30, 20)
    cases = [mrf_case(B, N, M, args.device, with_loop=(B, N, M) == loop_case) for B, N, M in mrf_grid]
    cases += [crf_case(B, N, M, args.device) for B, N, M in crf_grid]
    run_cases(cases, args)


if __name__ == "__main__":
    main()
