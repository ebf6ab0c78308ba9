import math
import re

import pytest
import torch

from fusedembed.ops import _reference, sampled_sigmoid_loss
from fusedembed.ops.sampled_sigmoid_loss import sampled_sigmoid_loss_counts
from fusedembed.testing import cpu_and_cuda, tolerance


def make_batch(B, C, device="cpu", dtype=torch.float32, pos_frac=0.05, ignore_frac=0.05, seed=0):
    """Logits, soft targets (1.0/0.9/0.8 positives, some 0.3 soft negatives, some -1) on device."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g) * 3
    u = torch.rand(B, C, generator=g)
    soft = torch.tensor([1.0, 0.9, 0.8])[torch.randint(0, 3, (B, C), generator=g)]
    targets = torch.where(u < pos_frac, soft, torch.zeros(()))
    targets = torch.where((u > pos_frac) & (u < pos_frac + 0.03), torch.tensor(0.3), targets)
    targets = torch.where(u > 1 - ignore_frac, torch.tensor(-1.0), targets)
    targets[:, 0] = 0.0  # class 0 never has a positive
    targets[0, 1] = 1.0  # class 1 always has one
    return logits.to(device, dtype), targets.to(device)


def reference(logits, targets, class_weight, pos_weight=12.0, pos_threshold=0.7, neg_ratio=None, empty_keep=0.0,
              seed=0, offset=0, row_start=0, reduction="mean", counts=None):
    """Loss, float64 gradient and kept columns of the reference."""
    z = logits.detach().double().requires_grad_()
    pw = pos_weight if isinstance(pos_weight, torch.Tensor) else torch.tensor(pos_weight)
    loss, kept = _reference.sampled_sigmoid_loss(z, targets, counts, class_weight, pw.to(z.device), pos_threshold,
                                                 neg_ratio, empty_keep, seed, offset, row_start, reduction)
    loss.sum().backward()
    return loss.detach(), z.grad, kept


def op_with_grad(logits, targets, class_weight, **kw):
    z = logits.detach().clone().requires_grad_()
    loss, counts, kept = sampled_sigmoid_loss(z, targets, class_weight, return_stats=True, **kw)
    loss.sum().backward()
    return loss.detach(), z.grad, counts, kept


# --- Philox ----------------------------------------------------------------------------------

def test_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 (Random123's kat_vectors).
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, expected in cases:
        got = _reference.philox4x32_10(*ctr, *key)
        assert tuple(int(w) for w in got) == expected


# --- counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("tdtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool],
                         ids=str)
def test_counts_match_reference(device, tdtype):
    _, targets = make_batch(37, 53, device)
    if tdtype in (torch.uint8, torch.bool):
        targets = (targets >= 0.7).to(tdtype)
    else:
        targets = targets.to(tdtype)
    got = sampled_sigmoid_loss_counts(targets, 0.7)
    expected = _reference.sampled_sigmoid_loss_counts(targets, 0.7)
    assert got.dtype == torch.int32 and got.shape == (2, 53)
    assert torch.equal(got.cpu(), expected.cpu())
    assert got[0, 0] == 0 and got[0, 1] >= 1


# --- op vs reference -------------------------------------------------------------------------

def weights(kind, C, device):
    if kind == "per_class":
        return torch.linspace(0.2, 2.0, C, device=device)
    return torch.stack([torch.linspace(0.5, 1.5, C), torch.linspace(2.0, 0.1, C)]).to(device)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "mean_classes", "sum", "none"])
@pytest.mark.parametrize("shape", [(13, 7), (64, 40), (9, 123)], ids=str)
def test_no_sampling_matches_reference(device, dtype, reduction, shape):
    B, C = shape
    logits, targets = make_batch(B, C, device, dtype)
    for wkind in ["per_class", "two_rows"]:
        cw = weights(wkind, C, device)
        pw = torch.linspace(1.0, 12.0, C, device=device) if wkind == "two_rows" else 12.0
        kw = dict(pos_weight=pw, neg_ratio=None, empty_keep=1.0, seed=5, reduction=reduction)
        loss, grad, counts, kept = op_with_grad(logits, targets, cw, **kw)
        ref_loss, ref_grad, ref_kept = reference(logits, targets, cw, **kw)
        assert loss.dtype == (dtype if reduction == "none" else torch.float32) and grad.dtype == dtype
        assert loss.shape == ((B, C) if reduction == "none" else ())
        assert kept.all() and torch.equal(kept.cpu(), ref_kept.cpu())
        tol = tolerance(dtype)
        scale = ref_loss.abs().max().item() if reduction != "none" else 1.0
        torch.testing.assert_close(loss.double(), ref_loss, atol=tol["atol"] * max(scale, 1), rtol=tol["rtol"])
        torch.testing.assert_close(grad.double(), ref_grad, **tol)
        ignored = targets == -1
        assert (grad[ignored] == 0).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("row_start", [0, 6, 1001])
def test_fixed_seed_keep_mask_matches_reference(device, row_start):
    B, C = 23, 150
    logits, targets = make_batch(B, C, device, pos_frac=0.02)
    cw = weights("per_class", C, device)
    kw = dict(neg_ratio=2.0, empty_keep=0.3, seed=12345, offset=7, row_start=row_start, reduction="none")
    loss, grad, counts, kept = op_with_grad(logits, targets, cw, **kw)
    ref_loss, ref_grad, ref_kept = reference(logits, targets, cw, **kw)
    mask, mask_kept = _reference.sampled_sigmoid_keep_mask(targets, counts, 0.7, 2.0, 0.3, 12345, 7, row_start)
    # Every kept entry has CE > 0 and weight > 0, so the nonzero pattern is the keep mask.
    assert torch.equal((loss != 0).cpu(), mask.cpu())
    assert torch.equal(kept.cpu(), ref_kept.cpu()) and torch.equal(kept.cpu(), mask_kept.cpu())
    # Sampling really happened: some negatives of classes with positives were dropped, some kept,
    # and some empty columns were dropped.
    has_pos = counts[0] > 0
    neg = (targets >= 0) & (targets < 0.7)
    assert (mask & neg & has_pos).any() and (~mask & neg & has_pos).any()
    assert (~kept & ~has_pos).any() and (kept & ~has_pos).any()
    torch.testing.assert_close(loss.double(), ref_loss, **tolerance(torch.float32))
    torch.testing.assert_close(grad.double(), ref_grad, **tolerance(torch.float32))


def test_split_batch_draws_what_the_whole_batch_draws():
    logits, targets = make_batch(22, 31, pos_frac=0.1)
    cw = torch.ones(31)
    counts = sampled_sigmoid_loss_counts(targets, 0.7)
    kw = dict(neg_ratio=1.0, empty_keep=0.5, seed=99, offset=3, reduction="none", counts=counts)
    whole = sampled_sigmoid_loss(logits, targets, cw, **kw)
    first = sampled_sigmoid_loss(logits[:9], targets[:9], cw, row_start=0, **kw)
    second = sampled_sigmoid_loss(logits[9:], targets[9:], cw, row_start=9, **kw)
    assert torch.equal(torch.cat([first, second]), whole)
    other = sampled_sigmoid_loss(logits, targets, cw, **{**kw, "offset": 4})
    assert not torch.equal((other != 0), (whole != 0))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("tdtype", [torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool], ids=str)
def test_target_dtypes(device, tdtype):
    logits, targets = make_batch(16, 24, device)
    if tdtype in (torch.uint8, torch.bool):
        targets = (targets >= 0.7).to(tdtype)
    else:
        targets = targets.to(tdtype)
    cw = weights("per_class", 24, device)
    kw = dict(neg_ratio=3.0, empty_keep=0.5, seed=1, offset=2)
    loss, grad, _, kept = op_with_grad(logits, targets, cw, **kw)
    ref_loss, ref_grad, ref_kept = reference(logits, targets, cw, **kw)
    assert torch.equal(kept.cpu(), ref_kept.cpu())
    torch.testing.assert_close(loss.double(), ref_loss, **tolerance(torch.float32))
    torch.testing.assert_close(grad.double(), ref_grad, **tolerance(torch.float32))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck_float64(device):
    logits, targets = make_batch(6, 9, device, torch.float64, pos_frac=0.2)
    cw = weights("two_rows", 9, device).double()
    pw = torch.linspace(1, 5, 9, dtype=torch.float64, device=device)
    for reduction in ["mean", "none"]:
        z = logits.detach().requires_grad_()
        def fn(a, reduction=reduction):
            return sampled_sigmoid_loss(a, targets, cw, pos_weight=pw, neg_ratio=1.0, empty_keep=0.5, seed=3,
                                        reduction=reduction)

        assert torch.autograd.gradcheck(fn, (z,))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    logits, targets = make_batch(8, 12, device, dtype, pos_frac=0.2)
    counts = torch.ops.fusedembed.sampled_sigmoid_loss_counts(targets, 0.7)
    torch.library.opcheck(torch.ops.fusedembed.sampled_sigmoid_loss_counts.default, (targets, 0.7))
    cw = weights("two_rows", 12, device).to(dtype)
    pw = torch.tensor(12.0, dtype=dtype, device=device)
    for reduction in ["mean", "none"]:
        for compute_grad in [True, False]:
            z = logits.detach().requires_grad_(compute_grad)
            args = (z, targets, counts, cw, pw, 0.7, 2.0, 0.4, 11, 5, 0, reduction, compute_grad)
            torch.library.opcheck(torch.ops.fusedembed.sampled_sigmoid_loss.default, args)


def test_compile_fullgraph_and_meta():
    logits, targets = make_batch(10, 16, pos_frac=0.2)
    cw = weights("per_class", 16, "cpu")

    def loss_fn(z, y):
        return sampled_sigmoid_loss(z, y, cw, neg_ratio=2.0, empty_keep=0.5, seed=8, offset=1) * 2

    z1 = logits.clone().requires_grad_()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    out = compiled(z1, targets)
    out.backward()
    z2 = logits.clone().requires_grad_()
    expected = loss_fn(z2, targets)
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(z1.grad, z2.grad)
    meta = torch.ops.fusedembed.sampled_sigmoid_loss(
        torch.empty(4, 7, device="meta"), torch.empty(4, 7, device="meta"),
        torch.empty(2, 7, dtype=torch.int32, device="meta"), torch.empty(7, device="meta"),
        torch.empty((), device="meta"), 0.7, None, 0.0, 0, 0, 0, "none", True)
    assert [t.shape for t in meta] == [(4, 7), (4, 7), (7,)] and meta[2].dtype == torch.bool


def test_no_grad_skips_the_gradient():
    logits, targets = make_batch(5, 6)
    counts = sampled_sigmoid_loss_counts(targets)
    _, grad, _ = torch.ops.fusedembed.sampled_sigmoid_loss(logits, targets, counts, torch.ones(6), torch.tensor(12.0),
                                                           0.7, None, 0.0, 0, 0, 0, "mean", False)
    assert grad.numel() == 0
    with torch.no_grad():
        z = logits.clone().requires_grad_()
        assert sampled_sigmoid_loss(z, targets, torch.ones(6), seed=0).grad_fn is None


def test_backward_refuses_what_it_cannot_do():
    logits, targets = make_batch(5, 6)
    counts = sampled_sigmoid_loss_counts(targets)
    z = logits.clone().requires_grad_()
    loss, _, _ = torch.ops.fusedembed.sampled_sigmoid_loss(z, targets, counts, torch.ones(6), torch.tensor(12.0), 0.7,
                                                           None, 0.0, 0, 0, 0, "mean", False)
    with pytest.raises(RuntimeError, match="backward needs the forward call to have compute_grad=True"):
        loss.backward()
    loss = sampled_sigmoid_loss(z, targets, torch.ones(6), seed=0)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(loss, z, create_graph=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_backward_scales_by_grad_output_however_it_is_called(device):
    # backward reuses the forward's gradient in place when nothing can read it again; every way
    # of calling backward must still give grad_output * d loss / d logits.
    logits, targets = make_batch(12, 10, device, pos_frac=0.2)
    cw = weights("per_class", 10, device)
    kw = dict(neg_ratio=1.0, empty_keep=0.5, seed=4)
    _, expected, _ = reference(logits, targets, cw.cpu(), **kw) if device == "cpu" else \
        reference(logits.cpu(), targets.cpu(), cw.cpu(), **kw)
    expected = expected.float().to(device)

    def fresh():
        z = logits.detach().clone().requires_grad_()
        return z, sampled_sigmoid_loss(z, targets, cw, **kw)

    z, loss = fresh()
    loss.backward()  # grad_output 1: the kernel leaves the gradient as it is
    torch.testing.assert_close(z.grad, expected)
    z, loss = fresh()
    (loss * 3).backward()
    torch.testing.assert_close(z.grad, 3 * expected)
    z, loss = fresh()
    (g,) = torch.autograd.grad(loss, z, grad_outputs=torch.tensor(-0.5, device=device))
    torch.testing.assert_close(g, -0.5 * expected)
    z, loss = fresh()  # the graph kept: a second backward must see the unscaled gradient again
    g1, = torch.autograd.grad(loss, z, grad_outputs=torch.tensor(2.0, device=device), retain_graph=True)
    g2, = torch.autograd.grad(loss, z, grad_outputs=torch.tensor(5.0, device=device))
    torch.testing.assert_close(g1, 2 * expected)
    torch.testing.assert_close(g2, 5 * expected)
    z = logits.detach().clone().requires_grad_()  # two uses of the logits: gradients add up
    (sampled_sigmoid_loss(z, targets, cw, **kw) * 2 + sampled_sigmoid_loss(z, targets, cw, **kw)).backward()
    torch.testing.assert_close(z.grad, 3 * expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("n", [4096, 4094, 7])
def test_scale_grad_op(device, dtype, n):
    grad = torch.randn(n, device=device).to(dtype)
    kept = grad.clone()
    torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_(grad, torch.tensor(1.0, device=device, dtype=dtype))
    assert torch.equal(grad, kept)
    torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_(grad, torch.tensor(0.25, device=device, dtype=dtype))
    torch.testing.assert_close(grad, kept * 0.25, **tolerance(dtype))
    torch.library.opcheck(torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_.default,
                          (grad, torch.tensor(3.0, device=device, dtype=dtype)))


@pytest.mark.extension
def test_scale_grad_op_names_bad_arguments():
    op = torch.ops.fusedembed.sampled_sigmoid_loss_scale_grad_
    with pytest.raises(RuntimeError, match=r"grad_loss must be a floating tensor of 1 element, got Float \[2\]"):
        op(torch.zeros(4), torch.ones(2))
    with pytest.raises(RuntimeError, match="grad must be float32, float16, bfloat16 or float64, got Long"):
        op(torch.zeros(4, dtype=torch.long), torch.ones(()))
    with pytest.raises(RuntimeError, match="grad must be contiguous"):
        op(torch.zeros(4, 4).t(), torch.ones(()))


# --- bad input ------------------------------------------------------------------------------

def _args(**over):
    logits, targets = make_batch(4, 5)
    args = dict(logits=logits, targets=targets, class_weight=torch.ones(5))
    args.update(over)
    kw = {k: v for k, v in args.items() if k not in ("logits", "targets", "class_weight")}
    return (args["logits"], args["targets"], args["class_weight"]), {"seed": 0, **kw}


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(logits=torch.zeros(4, 5, 2)), "logits must be a 2-d (B, C) tensor, got a 3-d tensor of shape [4, 5, 2]"),
        (dict(logits=torch.zeros(4, 5, dtype=torch.int64)), "logits must be float32, float16, bfloat16 or float64, got Long"),
        (dict(targets=torch.zeros(4, 6)), "targets must have the shape of logits [4, 5], got [4, 6]"),
        (dict(targets=torch.zeros(4, 5, dtype=torch.int64)), "targets must be floating, uint8 or bool, got Long"),
        (dict(logits=torch.zeros(0, 5), targets=torch.zeros(0, 5)), "empty batch: logits has shape [0, 5]"),
        (dict(class_weight=torch.ones(4)), "class_weight must have shape (C,) = (5,) or (2, C) = (2, 5), got [4]"),
        (dict(class_weight=torch.ones(3, 5)), "class_weight must have shape (C,) = (5,) or (2, C) = (2, 5), got [3, 5]"),
        (dict(class_weight=torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])), "class_weight must be finite and >= 0, got -1"),
        (dict(class_weight=torch.full((5,), float("nan"))), "class_weight must be finite and >= 0"),
        (dict(pos_weight=torch.ones(3)), "pos_weight must be a float, a 1-element tensor or have shape (C,) = (5,)"),
        (dict(pos_weight=-2.0), "pos_weight must be finite and >= 0, got -2"),
        (dict(pos_weight=torch.tensor([1.0, 2, 3, 4, float("inf")])), "pos_weight must be finite and >= 0"),
        (dict(pos_threshold=0.0), "pos_threshold must be in (0, 1], got 0"),
        (dict(pos_threshold=1.5), "pos_threshold must be in (0, 1], got 1.5"),
        (dict(neg_ratio=-1.0), "neg_ratio must be finite and > 0 (or None to keep every negative), got -1"),
        (dict(neg_ratio=float("inf")), "neg_ratio must be finite and > 0"),
        (dict(empty_keep=1.5), "empty_keep must be a probability in [0, 1], got 1.5"),
        (dict(empty_keep=float("nan")), "empty_keep must be a probability in [0, 1], got nan"),
        (dict(seed=-1), "seed must be in [0, 2^63), got -1"),
        (dict(seed=1.0), "seed must be an int, got float"),
        (dict(offset=2**63), "offset must be in [0, 2^63)"),
        (dict(reduction="avg"), "reduction must be 'mean', 'mean_classes', 'sum' or 'none', got 'avg'"),
        (dict(targets=torch.tensor([[0.0, 1.5, 0, 0, 0]] * 4)), "targets must be in [0, 1] or -1, got 1.5"),
        (dict(targets=torch.tensor([[0.0, 0, -0.5, 0, 0]] * 4)), "targets must be in [0, 1] or -1, got -0.5"),
        (dict(targets=torch.tensor([[0.0, 0, 0, float("nan"), 0]] * 4)), "targets must be in [0, 1] or -1, got nan"),
        (dict(targets=torch.full((4, 5), 2, dtype=torch.uint8)), "targets must be in [0, 1] or -1, got 2"),
        (dict(counts=torch.zeros(2, 5)), "counts must be an int32 tensor of shape (2, C) = (2, 5), got Float [2, 5]"),
        (dict(counts=torch.zeros(2, 4, dtype=torch.int32)), "counts must be an int32 tensor of shape (2, C) = (2, 5)"),
        (dict(counts=torch.full((2, 5), -1, dtype=torch.int32)), "counts must be >= 0, got -1"),
    ],
)
@pytest.mark.extension
def test_bad_input_is_named(over, message):
    args, kw = _args(**over)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=re.escape("sampled_sigmoid_loss: " + message)):
        sampled_sigmoid_loss(*args, **kw)


def test_bad_targets_are_caught_by_the_main_op_too():
    logits, _ = make_batch(4, 5)
    bad = torch.zeros(4, 5)
    bad[2, 3] = 1.25
    counts = torch.zeros(2, 5, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=re.escape("targets must be in [0, 1] or -1, got 1.25")):
        sampled_sigmoid_loss(logits, bad, torch.ones(5), seed=0, counts=counts)


@pytest.mark.extension
@pytest.mark.parametrize("name", ["class_weight", "pos_weight"])
def test_a_bad_weight_is_named_by_its_value(name):
    # The message gave the minimum ("got 2 (min of pos_weight)"), which hides an inf.
    w = torch.tensor([2.0, 3.0, float("inf"), 1.0, 1.0])
    args, kw = _args(**{name: w})
    with pytest.raises(RuntimeError, match=re.escape(f"sampled_sigmoid_loss: {name} must be finite and >= 0, got inf")):
        sampled_sigmoid_loss(*args, **kw)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_loss_is_float32_for_low_precision_logits(device, dtype):
    # float16 logits of -20 on positives, 64 x 512, "sum": 12 * softplus(20) per entry, 7.86e6 in
    # all, was inf (float16 overflows at 65504).
    z = torch.full((64, 512), -20.0, device=device, dtype=dtype, requires_grad=True)
    y = torch.ones(64, 512, device=device)
    loss = sampled_sigmoid_loss(z, y, torch.ones(512, device=device), seed=0, reduction="sum")
    truth = 64 * 512 * 12 * torch.nn.functional.softplus(torch.tensor(20.0, dtype=torch.float64)).item()
    assert loss.dtype == torch.float32 and abs(loss.item() - truth) <= 1e-5 * truth
    loss.backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()
    # C = 11166, logits 3 on negatives, "mean": 11166 softplus(3) = 34040.5 (float16 gave 34048).
    z = torch.full((4, 11166), 3.0, device=device, dtype=dtype)
    loss = sampled_sigmoid_loss(z, torch.zeros(4, 11166, device=device), torch.ones(11166, device=device), seed=0,
                                empty_keep=1.0)
    truth = 11166 * torch.nn.functional.softplus(torch.tensor(3.0, dtype=torch.float64)).item()
    assert loss.dtype == torch.float32 and abs(loss.item() - truth) <= 1e-5 * truth


@pytest.mark.extension
def test_row_start_range_and_direct_op_checks():
    logits, targets = make_batch(4, 5)
    counts = sampled_sigmoid_loss_counts(targets)
    with pytest.raises(RuntimeError, match=re.escape("row_start must be >= 0 with row_start + B <= 2^32")):
        sampled_sigmoid_loss(logits, targets, torch.ones(5), seed=0, row_start=2**32 - 2)
    with pytest.raises(RuntimeError, match=re.escape("seed must be in [0, 2^63), got -5")):
        torch.ops.fusedembed.sampled_sigmoid_loss(logits, targets, counts, torch.ones(5), torch.tensor(1.0), 0.7, None,
                                                  0.0, -5, 0, 0, "mean", False)
    with pytest.raises(ValueError, match="class_weight must not require grad"):
        sampled_sigmoid_loss(logits, targets, torch.ones(5, requires_grad=True), seed=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float32_math_matches_float64_over_the_logit_range(device):
    # float32 logits take vectorized exp/log on the CPU: entry by entry they must agree with the
    # float64 path from the centre to the far tails, for hard and soft targets.
    z = torch.linspace(-100, 100, 4001, device=device)
    y = torch.tensor([0.0, 0.3, 0.8, 1.0], device=device)[:, None].expand(4, z.numel()).contiguous()
    z = z.expand(4, -1).contiguous()
    w = torch.full((z.shape[1],), 0.7, device=device)
    kw = dict(pos_weight=3.0, empty_keep=1.0, seed=0, reduction="none")
    z32, z64 = z.clone().requires_grad_(), z.double().requires_grad_()
    l32 = sampled_sigmoid_loss(z32, y, w, **kw)
    l64 = sampled_sigmoid_loss(z64, y.double(), w.double(), **kw)
    l32.sum().backward()
    l64.sum().backward()
    # Relative accuracy down to the tiny tails (exp(-100) ~ 4e-44 is subnormal in float32)...
    torch.testing.assert_close(l32, l64.float(), rtol=1e-5, atol=1e-40)
    hard = [0, 3]
    torch.testing.assert_close(z32.grad[hard], z64.grad[hard].float(), rtol=1e-5, atol=1e-40)
    # ...except where a soft target's two gradient terms cancel.
    torch.testing.assert_close(z32.grad, z64.grad.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nonfinite_logits(device):
    B, C = 4, 3
    z = torch.zeros(B, C, device=device)
    y = torch.zeros(B, C, device=device)
    y[0, 0] = 1.0
    z[0, 0] = float("inf")   # agrees with y = 1: costs 0
    z[1, 0] = float("-inf")  # agrees with y = 0: costs 0
    z[2, 0] = float("inf")   # disagrees with y = 0: costs inf
    z[3, 1] = float("nan")   # kept (column 1 kept with empty_keep = 1): NaN
    z[3, 2] = float("nan")   # column 2 has zero weight: skipped
    cw = torch.tensor([1.0, 1.0, 0.0], device=device)
    zz = z.clone().requires_grad_()
    loss = sampled_sigmoid_loss(zz, y, cw, empty_keep=1.0, seed=0, reduction="none")
    loss.sum().backward()
    assert loss[0, 0] == 0 and loss[1, 0] == 0 and loss[2, 0] == math.inf
    assert torch.isnan(loss[3, 1]) and loss[3, 2] == 0
    assert zz.grad[0, 0] == 0 and zz.grad[1, 0] == 0 and zz.grad[2, 0] == 1
    assert torch.isnan(zz.grad[3, 1]) and zz.grad[3, 2] == 0
    finite = torch.ones(B, C, dtype=torch.bool, device=device)
    finite[3, 1] = False
    assert torch.isfinite(zz.grad[finite]).all()
    # A NaN logit in a dropped column cannot reach the loss.
    z2 = torch.zeros(B, C, device=device)
    z2[:, 1] = float("nan")
    assert torch.isfinite(sampled_sigmoid_loss(z2, y, torch.ones(3, device=device), empty_keep=0.0, seed=0))
    ref, _ = _reference.sampled_sigmoid_loss(z.double(), y, None, cw, torch.tensor(12.0, device=device), 0.7, None, 1.0,
                                             0, 0, 0, "none")
    torch.testing.assert_close(loss.double(), ref, equal_nan=True)


# --- statistics of the draws ----------------------------------------------------------------

def test_keep_rates_are_as_specified():
    B, C, runs = 512, 40, 25
    targets = torch.zeros(B, C)
    npos = torch.arange(C) % 5 + 1
    for j in range(20):  # classes 0..19 have npos[j] positives; 20..39 have none
        targets[: npos[j], j] = 1.0
    ratio, empty_keep = 3.0, 0.2
    logits = torch.zeros(B, C)
    kept_neg = col_keeps = 0
    for run in range(runs):
        loss = sampled_sigmoid_loss(logits, targets, torch.ones(C), neg_ratio=ratio, empty_keep=empty_keep, seed=77,
                                    offset=run, reduction="none")
        kept = loss != 0
        assert kept[:, :20].sum(0).ge(npos[:20]).all()  # every positive is kept
        kept_neg += int(kept[:, :20].sum()) - int(npos[:20].sum())
        col_keeps += int(kept[:, 20:].any(0).sum())
    # Kept negatives: sum over classes and runs of Binomial(nneg_j, p_j), p_j = ratio * npos_j / nneg_j.
    p = ratio * npos[:20].double() / (B - npos[:20]).double()
    mean = runs * (ratio * npos[:20].double()).sum()
    sd = math.sqrt(runs * ((B - npos[:20]).double() * p * (1 - p)).sum())
    assert abs(kept_neg - mean.item()) < 4 * sd
    # Column keeps of empty classes: Binomial(20 * runs, empty_keep).
    n = 20 * runs
    assert abs(col_keeps - n * empty_keep) < 4 * math.sqrt(n * empty_keep * (1 - empty_keep))


def test_draws_are_uncorrelated_across_rows_and_classes():
    # Independent Bernoulli(0.5) keeps: neighbouring rows (sharing a Philox call) and neighbouring
    # classes must agree half the time, within 4 sigma.
    B, C = 400, 64
    targets = torch.zeros(B, C)
    targets[0] = 1.0
    loss = sampled_sigmoid_loss(torch.zeros(B, C), targets, torch.ones(C), neg_ratio=0.5 * (B - 1), seed=5,
                                reduction="none")
    m = (loss[1:] != 0).float()
    n_rows, n_cols = (m[1:] == m[:-1]).numel(), (m[:, 1:] == m[:, :-1]).numel()
    for agree, n in [((m[1:] == m[:-1]).float().sum(), n_rows), ((m[:, 1:] == m[:, :-1]).float().sum(), n_cols)]:
        assert abs(agree.item() - n / 2) < 4 * math.sqrt(n / 4)
    assert abs(m.mean().item() - 0.5) < 4 * math.sqrt(0.25 / m.numel())


# --- CUDA == CPU ----------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(256, 11166), (37, 1000), (130, 4096), (5, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_equals_cpu(dtype, shape, reduction):
    B, C = shape
    logits, targets = make_batch(B, C, "cpu", dtype, pos_frac=0.01)
    cw = weights("two_rows", C, "cpu")
    kw = dict(neg_ratio=5.0, empty_keep=0.1, seed=2024, offset=3, row_start=2, reduction=reduction)
    cpu = op_with_grad(logits, targets, cw, **kw)
    gpu = op_with_grad(logits.cuda(), targets.cuda(), cw.cuda(), **kw)
    assert torch.equal(gpu[2].cpu(), cpu[2]) and torch.equal(gpu[3].cpu(), cpu[3])  # counts, kept: exact
    if reduction == "none":
        assert torch.equal((gpu[0] != 0).cpu(), cpu[0] != 0)  # keep masks: exact
    tol = tolerance(dtype)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=tol["atol"] * 10, rtol=tol["rtol"])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], **tol)


@pytest.mark.cuda
def test_cuda_uint8_targets_and_vector_path():
    # C % 4 == 0 takes the 4-wide vector loads (C = 11166 in test_cuda_equals_cpu the 2-wide ones);
    # uint8 targets read a quarter of the bytes.
    logits, targets = make_batch(64, 512, "cpu", pos_frac=0.02)
    targets = (targets >= 0.7).to(torch.uint8)
    cw = weights("per_class", 512, "cpu")
    kw = dict(neg_ratio=2.0, empty_keep=0.3, seed=5, reduction="none")
    cpu = op_with_grad(logits, targets, cw, **kw)
    gpu = op_with_grad(logits.cuda(), targets.cuda(), cw.cuda(), **kw)
    assert torch.equal((gpu[0] != 0).cpu(), cpu[0] != 0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], **tolerance(torch.float32))


@pytest.mark.cuda
def test_cuda_invalid_targets_give_nan():
    logits, targets = make_batch(8, 16, "cuda")
    targets[3, 5] = 1.5
    z = logits.clone().requires_grad_()
    loss = sampled_sigmoid_loss(z, targets, torch.ones(16, device="cuda"), seed=0, reduction="none")
    loss.sum().backward()
    assert torch.isnan(loss[3, 5]) and torch.isnan(z.grad[3, 5])
    bad = torch.isnan(loss)
    assert bad.sum() == 1
