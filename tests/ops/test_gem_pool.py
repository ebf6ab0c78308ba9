import math
import re

import pytest
import torch

from fusedembed.nn import GeM
from fusedembed.ops import _reference, gem_pool
from fusedembed.testing import cpu_and_cuda, tolerance

SHAPES = [(2, 3, 1, 1), (3, 5, 7, 7), (2, 16, 14, 14), (2, 9, 5, 3), (1, 13, 32, 32), (4, 7, 11)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_p(kind, C, device, dtype=torch.float32):
    if kind == "float":
        return 2.7
    if kind == "shared":
        return torch.tensor(3.3, dtype=dtype, device=device)
    return torch.linspace(1.2, 6.0, C, dtype=dtype, device=device)


def as_tensor(p, dtype, device):
    return p.to(dtype) if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=dtype, device=device)


def layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.to(memory_format=torch.channels_last)
    else:
        yield "channels_inner", x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p_kind", ["float", "shared", "per_channel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(device, shape, p_kind, dtype):
    torch.manual_seed(0)
    x = (torch.rand(shape, device=device) * 4).to(dtype)
    p = make_p(p_kind, shape[1], device)
    expected = _reference.gem_pool(x.double(), as_tensor(p, torch.float64, device), 1e-6)
    for name, xl in layouts(x):
        got = gem_pool(xl, p)
        assert got.dtype == dtype and got.shape == shape[:2], name
        torch.testing.assert_close(got.double(), expected, **tolerance(dtype), msg=name)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_reference(device, dtype):
    torch.manual_seed(1)
    x0 = torch.rand(3, 20, 6, 5, device=device) * 3
    x0[0, 0, 0, 0] = 1e-8  # below eps: its gradient must be 0
    for p_kind in ["shared", "per_channel"]:
        p0 = make_p(p_kind, 20, device)
        for name, xl in layouts(x0.to(dtype)):
            x = xl.detach().requires_grad_()
            p = p0.clone().requires_grad_()
            g = torch.randn(3, 20, device=device)
            (gem_pool(x, p) * g.to(dtype)).sum().backward()
            xr = x0.double().requires_grad_()
            pr = p0.double().requires_grad_()
            (_reference.gem_pool(xr, pr, 1e-6) * g.double()).sum().backward()
            assert x.grad.stride() == xl.stride(), f"{name}: dx must keep x's layout"
            assert x.grad[0, 0, 0, 0] == 0
            tol = tolerance(dtype)
            torch.testing.assert_close(x.grad.double(), xr.grad, **tol, msg=f"{name} dx")
            torch.testing.assert_close(p.grad.double(), pr.grad, atol=tol["atol"] * 50, rtol=tol["rtol"] * 5,
                                       msg=f"{name} dp")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("p_kind", ["shared", "per_channel"])
def test_gradcheck_float64(device, p_kind):
    torch.manual_seed(2)
    x = (torch.rand(2, 4, 3, 5, dtype=torch.float64, device=device) + 0.1)
    p = make_p(p_kind, 4, device, torch.float64).requires_grad_()
    for _, xl in layouts(x):
        xg = xl.detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: gem_pool(a, b), (xg, p))
    x1 = (torch.rand(2, 3, 7, dtype=torch.float64, device=device) + 0.1).requires_grad_()
    p1 = torch.tensor([2.5], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem_pool(a, b), (x1, p1))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    x = torch.rand(2, 6, 4, 4, dtype=dtype, device=device) + 0.1
    for p in [torch.tensor(3.0, dtype=dtype, device=device), torch.rand(6, dtype=dtype, device=device) + 1]:
        for xl in [x, x.to(memory_format=torch.channels_last)]:
            xg, pg = xl.detach().requires_grad_(), p.detach().requires_grad_()
            torch.library.opcheck(torch.ops.fusedembed.gem_pool.default, (xg, pg, 1e-6))
            y = gem_pool(xg, pg).detach()
            torch.library.opcheck(torch.ops.fusedembed.gem_pool_backward.default,
                                  (torch.ones_like(y), xl, p, y, 1e-6, True, True))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("value", [50.0, 1e-3, 60000.0])
@pytest.mark.parametrize("p", [3.0, 10.0])
def test_low_precision_extremes_are_finite(device, dtype, value, p):
    if value > torch.finfo(dtype).max:
        pytest.skip("not representable")
    x = torch.full((2, 4, 7, 7), value, device=device)
    x[:, :, 0, 0] = value / 3
    xl = x.to(dtype).requires_grad_()
    pt = torch.tensor(p, device=device, requires_grad=True)
    y = gem_pool(xl, pt)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xl.grad).all() and torch.isfinite(pt.grad)
    expected = _reference.gem_pool(x.to(dtype).double(), torch.tensor(p, dtype=torch.float64), 1e-6)
    torch.testing.assert_close(y.double(), expected.to(device), **tolerance(dtype))
    # The naive formula the op replaces overflows in fp16 at x=50, p=3.
    if dtype == torch.float16 and value == 50.0:
        naive = torch.nn.functional.avg_pool2d(xl.detach().clamp(min=1e-6).pow(p), (7, 7)).pow(1 / p)
        assert not torch.isfinite(naive).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 70, 70), (1, 70, 4200)], ids=str)
def test_long_rows_match_reference(device, dtype, shape):
    # Long rows and large channels_last tiles (the CPU kernel converts float16/bfloat16 a row or a
    # 64-channel tile at a time into a float buffer).
    torch.manual_seed(5)
    x0 = torch.rand(shape, device=device) * 3
    x0.view(-1)[::997] = 1e-8  # below eps
    p0 = torch.linspace(1.5, 4.5, shape[1], device=device)
    g = torch.randn(shape[:2], device=device)
    xr, pr = x0.to(dtype).double().requires_grad_(), p0.double().requires_grad_()
    yr = _reference.gem_pool(xr, pr, 1e-6)
    (yr * g.double()).sum().backward()
    tol = tolerance(dtype)
    for name, xl in layouts(x0.to(dtype)):
        x, p = xl.detach().requires_grad_(), p0.clone().requires_grad_()
        y = gem_pool(x, p)
        torch.testing.assert_close(y.double(), yr.detach(), **tol, msg=f"{name} y")
        (y * g.to(dtype)).float().sum().backward()
        torch.testing.assert_close(x.grad.double(), xr.grad, **tol, msg=f"{name} dx")
        torch.testing.assert_close(p.grad.double(), pr.grad, atol=tol["atol"] * 50, rtol=tol["rtol"] * 5,
                                   msg=f"{name} dp")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_of_x_only_and_p_only(device, dtype):
    torch.manual_seed(6)
    x0 = (torch.rand(2, 70, 5, 5, device=device) * 3).to(dtype)
    p0 = torch.linspace(1.5, 4.5, 70, device=device)
    for name, xl in layouts(x0):
        x, p = xl.detach().requires_grad_(), p0.clone().requires_grad_()
        gem_pool(x, p).float().sum().backward()
        x_only = xl.detach().requires_grad_()
        gem_pool(x_only, p0).float().sum().backward()
        p_only = p0.clone().requires_grad_()
        gem_pool(xl, p_only).float().sum().backward()
        torch.testing.assert_close(x_only.grad, x.grad, msg=name)
        torch.testing.assert_close(p_only.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_propagates(device, dtype):
    x0 = torch.rand(2, 5, 6, 6, device=device) + 0.5
    x0[1, 2, 3, 4] = float("nan")
    for name, xl in layouts(x0.to(dtype)):
        x = xl.detach().requires_grad_()
        p = torch.tensor(3.0, device=device, requires_grad=True)
        y = gem_pool(x, p)
        nan_rows = torch.zeros(2, 5, dtype=torch.bool, device=device)
        nan_rows[1, 2] = True
        assert torch.equal(torch.isnan(y), nan_rows), name
        y.float().sum().backward()
        # The whole row's dx is NaN, the NaN element's own too (the reference's clamp backward gives
        # it 0; the kernels, CPU and CUDA alike, do not special-case it).
        assert torch.isnan(x.grad[1, 2]).all() and torch.isfinite(x.grad[~nan_rows]).all(), name
        assert torch.isnan(p.grad), name


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("eps", [1e-30, 1.1754944e-38])
def test_tiny_eps_and_values(device, eps):
    # Ratios to the row maximum far below float's normal range still give the reference.
    torch.manual_seed(7)
    x0 = torch.rand(2, 3, 5, 5, device=device) * 10
    x0[:, :, 0, :] = 1e-38
    x0[:, :, 1, :] = 0.0
    p = torch.tensor(0.7, device=device)
    expected = _reference.gem_pool(x0.double(), p.double(), float(torch.tensor(eps).item()))
    for name, xl in layouts(x0):
        torch.testing.assert_close(gem_pool(xl, p, eps=eps).double(), expected, **tolerance(torch.float32), msg=name)


def test_compile_fullgraph_and_meta():
    x = torch.rand(2, 8, 5, 5, requires_grad=True)
    p = torch.tensor(3.0, requires_grad=True)
    compiled = torch.compile(lambda a, b: gem_pool(a, b).square().sum(), fullgraph=True, backend="aot_eager")
    compiled(x, p).backward()
    x2, p2 = x.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
    gem_pool(x2, p2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(p.grad, p2.grad)
    meta = gem_pool(torch.empty(4, 16, 7, 7, device="meta"), torch.empty(16, device="meta"))
    assert meta.shape == (4, 16) and meta.device.type == "meta"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda: (torch.rand(2, 3), 3.0), "x must be (B, C, H, W) or (B, C, L), got a 2-d tensor"),
        (lambda: (torch.randint(0, 5, (2, 3, 4, 4)), 3.0), "x must be float32, float16, bfloat16 or float64"),
        (lambda: (torch.rand(2, 3, 0, 4), 3.0), "x has an empty spatial size"),
        (lambda: (torch.rand(2, 3, 4, 4), -1.0), "p must be finite and > 0, got -1.0"),
        (lambda: (torch.rand(2, 3, 4, 4), float("nan")), "p must be finite and > 0, got nan"),
        (lambda: (torch.rand(2, 3, 4, 4), torch.tensor([1.0, 0.0, 2.0])), "p must be finite and > 0"),
        (lambda: (torch.rand(2, 3, 4, 4), torch.ones(4)), "p must be a float, a 1-element tensor or have shape (C,) = (3,)"),
        (lambda: (torch.rand(2, 3, 4, 4), torch.ones(3, 1)), "p must be a float, a 1-element tensor or have shape (C,)"),
        (lambda: (torch.rand(2, 3, 4, 4), "3"), "p must be a float or a tensor, got str"),
    ],
)
@pytest.mark.extension
def test_bad_input_is_named(make_args, message):
    x, p = make_args()
    with pytest.raises((RuntimeError, ValueError, TypeError), match=_escape(message)):
        gem_pool(x, p)


@pytest.mark.extension
def test_bad_p_tensor_names_the_bad_value():
    with pytest.raises(RuntimeError, match=re.escape("gem_pool: p must be finite and > 0, got inf")):
        gem_pool(torch.rand(2, 3, 4, 4), torch.tensor([2.0, float("inf"), 3.0]))


# --- edges: each failed before its fix (the closing note of issue 16 has the values) --------------

EXTREME = [1e-30, 1e30, 1.0, 1e-10]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "p, y_true, grad_true",
    [
        (1.0, 2.5e29, [0.25] * 4),  # was [nan, .25, .25, .25]
        # True values from mpmath at 50 digits: dy/dx_0 = (x_0 / y)^(-1/2) / 4 = 6.25e28 (was inf).
        (0.5, 6.25e28, [6.25e28, 0.0625, 6.25e13, 6.25e18]),
    ],
)
def test_extreme_ratios_have_exact_gradients(device, p, y_true, grad_true):
    x0 = torch.tensor(EXTREME, device=device).repeat(2, 3, 1)
    for name, xl in layouts(x0):
        x = xl.detach().requires_grad_()
        y = gem_pool(x, p, eps=1e-35)
        y.sum().backward()
        torch.testing.assert_close(y, torch.full_like(y, y_true), rtol=1e-5, atol=0, msg=name)
        expected = torch.tensor(grad_true, device=device).expand(2, 3, 4)
        torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_learnable_p_at_the_smallest_eps(device):
    # Zeros clamp to the smallest eps accepted; dp was NaN with eps = 1e-45.
    torch.manual_seed(9)
    eps = 1.1754944e-38
    x0 = torch.rand(2, 3, 5, 5, device=device) * 3
    x0[:, :, 0, :] = 0.0
    xr, pr = x0.double().requires_grad_(), torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    _reference.gem_pool(xr, pr, eps).sum().backward()
    for name, xl in layouts(x0):
        x, p = xl.detach().requires_grad_(), torch.tensor(0.7, device=device, requires_grad=True)
        gem_pool(x, p, eps=eps).sum().backward()
        assert torch.isfinite(p.grad), name
        torch.testing.assert_close(p.grad.double().cpu(), pr.grad, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(x.grad.double(), xr.grad.to(device), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.extension
@pytest.mark.parametrize("eps", [1e-45, 1e-46, 0.0, -1.0, float("inf"), float("nan")])
def test_eps_below_the_smallest_normal_float_is_refused(eps):
    # 1e-46 passed the check before and returned NaN; 1e-45 gave a NaN dp.
    message = f"gem_pool: eps must be finite and >= 1.175494e-38 (the smallest normal float32), got {eps:g}"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        gem_pool(torch.rand(1, 2, 3, 3), 3.0, eps=eps)


def test_eps_must_be_a_number():
    with pytest.raises(TypeError, match=re.escape("gem_pool: eps must be a float, got NoneType")):
        gem_pool(torch.rand(1, 2, 3, 3), 3.0, eps=None)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_inf_pools_to_inf(device, dtype):
    # +inf gave NaN (kernel and reference alike); the mean of powers is infinite, so is y.
    x0 = torch.rand(2, 3, 4, 4, device=device) + 0.5
    x0[0, 1, 2, 3] = float("inf")
    x0[1, 2] = float("inf")  # a whole row: two infinite partial maxima meet (CUDA merge)
    rows = torch.zeros(2, 3, dtype=torch.bool, device=device)
    rows[0, 1] = rows[1, 2] = True
    ref = _reference.gem_pool(x0.to(dtype), torch.tensor(3.0))
    assert torch.equal(torch.isposinf(ref), rows) and torch.isfinite(ref[~rows]).all()
    for name, xl in layouts(x0.to(dtype)):
        y = gem_pool(xl, 3.0)
        assert torch.equal(torch.isposinf(y), rows), name
        torch.testing.assert_close(y[~rows], ref[~rows], msg=name)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float16_subnormal_outputs_have_exact_gradients(device):
    # Outputs below float16's smallest normal (6.1e-5): backward read the rounded y, and dx was off
    # by up to 34% at p = 10. The op keeps y in float32 for backward.
    torch.manual_seed(8)
    x0 = (torch.rand(2, 4, 5, 5, device=device) * 2e-6 + 1e-7).half()
    xr = x0.double().requires_grad_()
    yr = _reference.gem_pool(xr, torch.tensor(10.0, dtype=torch.float64), 1e-8)
    yr.sum().backward()
    assert (yr < 6.1e-5).all()
    for name, xl in layouts(x0):
        x = xl.detach().requires_grad_()
        y = gem_pool(x, 10.0, eps=1e-8)
        y.float().sum().backward()
        torch.testing.assert_close(y.double(), yr.detach(), rtol=0, atol=6e-8, msg=name)  # float16's spacing there
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=2e-3, atol=1e-7, msg=name)


@pytest.mark.cuda
def test_devices_must_match():
    with pytest.raises(RuntimeError, match="p is on cpu but x is on cuda"):
        gem_pool(torch.rand(1, 2, 3, 3, device="cuda"), torch.tensor(3.0))


@pytest.mark.cuda
def test_cuda_invalid_p_gives_nan_rows():
    p = torch.tensor([2.0, -1.0], device="cuda")
    y = gem_pool(torch.rand(3, 2, 4, 4, device="cuda"), p)
    assert torch.isfinite(y[:, 0]).all() and torch.isnan(y[:, 1]).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# 7x7 and (3, 40, 9) take the staged dx path, 45x45 rows are too long to stage, 32x32 is vectorized.
@pytest.mark.parametrize("shape", [(256, 64, 7, 7), (8, 2048, 7, 7), (4, 96, 32, 32), (3, 40, 9), (2, 5, 45, 45)], ids=str)
def test_cuda_equals_cpu(dtype, shape):
    torch.manual_seed(3)
    x = (torch.rand(shape) * 5).to(dtype)
    p = torch.linspace(1.5, 5, shape[1])
    for _, xl in layouts(x):
        xc, pc = xl.detach().requires_grad_(), p.clone().requires_grad_()
        xg, pg = xl.cuda().detach().requires_grad_(), p.cuda().requires_grad_()
        g = torch.randn(shape[:2]).to(dtype)
        (gem_pool(xc, pc) * g).float().sum().backward()
        (gem_pool(xg, pg) * g.cuda()).float().sum().backward()
        tol = tolerance(dtype)
        torch.testing.assert_close(gem_pool(xg, pg).cpu(), gem_pool(xc, pc), **tol)
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, **tol)
        # dp sums B rows of y-rounded terms: the dtype's tolerance, widened like the dp check above.
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=tol["rtol"] * 5, atol=tol["atol"] * 50)


class TestGeMModule:
    def test_learns_p_and_keeps_it_positive(self):
        torch.manual_seed(4)
        gem = GeM(p=3.0)
        opt = torch.optim.SGD(gem.parameters(), lr=5.0)
        x = torch.rand(8, 4, 5, 5)
        target = x.flatten(2).amax(-1)  # max pooling is GeM with p -> inf: p must grow
        for _ in range(50):
            opt.zero_grad()
            (gem(x) - target).square().mean().backward()
            opt.step()
        assert gem.p.item() > 3.5

    def test_parametrization_never_reaches_nonpositive_p(self):
        gem = GeM(p=0.5)
        with torch.no_grad():
            gem.log_p.sub_(100.0)  # a huge optimizer step downwards
        assert gem.p.item() > 0 and math.isfinite(gem(torch.rand(1, 2, 3, 3)).sum().item())

    def test_per_channel_and_frozen(self):
        gem = GeM(p=2.0, per_channel=True, num_channels=6)
        assert gem.p.shape == (6,) and isinstance(gem.log_p, torch.nn.Parameter)
        assert gem(torch.rand(2, 6, 4, 4)).shape == (2, 6)
        frozen = GeM(p=4.0, learn_p=False)
        assert not list(frozen.parameters()) and "log_p" in frozen.state_dict()

    def test_bad_config(self):
        with pytest.raises(ValueError, match="per_channel=True needs num_channels"):
            GeM(per_channel=True)
        with pytest.raises(ValueError, match="p must be finite and > 0, got 0"):
            GeM(p=0)


def _escape(text):
    import re

    return re.escape(text)
