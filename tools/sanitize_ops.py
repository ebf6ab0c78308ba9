"""One small call of every kernel, forward and backward, for compute-sanitizer to watch.

    compute-sanitizer --tool memcheck python tools/sanitize_ops.py --device cuda

Shapes are small (the sanitizer slows kernels a hundredfold) but odd, so tails and partial
blocks run, and every kernel path is taken once: GeM in NCHW and channels_last, fp32 and bf16;
the sampled loss with and without negative sampling; Potts Viterbi with ragged lengths and region
counts, and the CRF. Each result is compared with the pure-PyTorch reference, so a kernel that
reads out of bounds without faulting still fails here. Exits non-zero on a mismatch.
"""

import argparse
import sys

import torch

import fusedembed
from fusedembed import ops
from fusedembed.ops import _reference as ref


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    print(f"{name:<44} max abs diff {err:.2e}  {'ok' if err <= tol else 'MISMATCH'}")
    return err <= tol


def gem(device: str) -> bool:
    ok = True
    for dtype, fmt, tol in ((torch.float32, torch.contiguous_format, 1e-4), (torch.bfloat16, torch.channels_last, 5e-2)):
        x = torch.rand(3, 37, 5, 7, device=device).to(dtype).to(memory_format=fmt).requires_grad_()
        p = torch.tensor([3.0], device=device, requires_grad=True)
        y = ops.gem_pool(x, p)
        gx, gp = torch.autograd.grad(y.float().sum(), (x, p))
        x_ref = x.detach().float().requires_grad_()
        p_ref = p.detach().clone().requires_grad_()
        y_ref = ref.gem_pool(x_ref, p_ref, 1e-6)
        rx, rp = torch.autograd.grad(y_ref.sum(), (x_ref, p_ref))
        tag = f"gem_pool {str(dtype)[6:]} {'NHWC' if fmt is torch.channels_last else 'NCHW'}"
        ok &= close(tag + " forward", y.float(), y_ref, tol)
        ok &= close(tag + " dx", gx.float(), rx, tol)
        ok &= close(tag + " dp", gp, rp, tol * 10)
    return ok


def loss(device: str) -> bool:
    ok = True
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 301, generator=gen).to(device)
    targets = (torch.rand(9, 301, generator=gen) < 0.05).float().to(device)
    targets[0, :7] = -1
    weight = torch.rand(301, generator=gen).to(device)
    for neg_ratio in (None, 2.0):
        kwargs = dict(pos_weight=12.0, neg_ratio=neg_ratio, empty_keep=0.1, seed=7, offset=3)
        z = logits.clone().requires_grad_()
        out = ops.sampled_sigmoid_loss(z, targets, weight, **kwargs)
        (g,) = torch.autograd.grad(out, z)
        z_ref = logits.clone().requires_grad_()
        out_ref, _ = ref.sampled_sigmoid_loss(z_ref, targets, None, weight, torch.tensor([12.0], device=device),
                                              0.7, neg_ratio, 0.1, 7, 3, 0, "mean")
        (g_ref,) = torch.autograd.grad(out_ref, z_ref)
        ok &= close(f"sampled_sigmoid_loss neg_ratio={neg_ratio} loss", out, out_ref, 1e-4)
        ok &= close(f"sampled_sigmoid_loss neg_ratio={neg_ratio} dlogits", g, g_ref, 1e-5)
    return ok


def viterbi(device: str) -> bool:
    gen = torch.Generator().manual_seed(0)
    unary = torch.randn(5, 13, 21, generator=gen).to(device)
    lengths = torch.tensor([13, 1, 0, 7, 12], device=device)
    regions = torch.tensor([21, 1, 3, 20, 8], device=device)
    path, score = ops.mrf_viterbi(unary, 0.7, lengths, regions)
    path_ref, score_ref = ref.mrf_viterbi(unary, torch.tensor(0.7), lengths, regions)
    ok = close("mrf_viterbi path", path, path_ref, 0) & close("mrf_viterbi score", score, score_ref, 1e-4)
    trans = torch.randn(21, 21, generator=gen).to(device)
    start, end = torch.randn(2, 21, generator=gen).to(device)
    path, score = ops.crf_viterbi(unary, trans, lengths, start=start, end=end)
    path_ref, score_ref = ref.crf_viterbi(unary, trans, lengths, start, end)
    return ok & close("crf_viterbi path", path, path_ref, 0) & close("crf_viterbi score", score, score_ref, 1e-4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    info = fusedembed.build_info()
    kind = torch.device(args.device).type
    if kind not in info["devices"]:
        # Without kernels for the device the ops run the reference, and this would compare it with itself.
        raise SystemExit(f"--device: expected a device fusedembed._C has kernels for, {info['devices']}, "
                         f"got {args.device!r} (extension: {info['extension']})")
    print(f"fusedembed._C: {info['extension']} (CUDA {info['cuda_version']}, archs {info['cuda_archs']})")
    ok = gem(args.device) & loss(args.device) & viterbi(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print("all kernels match the reference" if ok else "MISMATCH: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
