import math

import pytest
import torch

from fusedembed.nn import GeM
from fusedembed.ops import gem_pool


def test_p1_fixed_is_exact_average_even_below_eps():
    x = torch.randn(2, 3, 4, 5)              # negative inputs: gem_pool would clamp them
    torch.testing.assert_close(GeM(p=1.0, learn_p=False)(x), x.mean((2, 3)))


def test_p_inf_is_max_pooling():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(GeM(p=math.inf, learn_p=False)(x), x.amax((2, 3)))
    with pytest.raises(ValueError, match="cannot be learned"):
        GeM(p=math.inf, learn_p=True)


def test_learnable_p1_goes_through_gem_and_has_a_gradient():
    x = torch.rand(2, 3, 4, 4) + 0.1
    g = GeM(p=1.0, learn_p=True)
    y = g(x)
    torch.testing.assert_close(y, gem_pool(x, 1.0))
    y.sum().backward()
    assert g.log_p.grad is not None and torch.isfinite(g.log_p.grad)


@pytest.mark.parametrize("parametrization, name", [("log", "log_p"), ("direct", "p_value")])
def test_parametrization_stores_p_and_steps_on_it(parametrization, name):
    g = GeM(p=3.0, parametrization=parametrization)
    assert name in dict(g.named_parameters())
    torch.testing.assert_close(g.p, torch.tensor(3.0))
    x = torch.rand(2, 3, 4, 4) + 0.1
    g(x).sum().backward()
    raw = getattr(g, name)
    p = torch.tensor(3.0, requires_grad=True)
    (dp,) = torch.autograd.grad(gem_pool(x, p).sum(), [p])
    # direct: d/dp; log: d/dlog p = p d/dp
    torch.testing.assert_close(raw.grad, dp if parametrization == "direct" else 3.0 * dp)


def test_set_p_keeps_the_parameter_object_and_set_learn_p_switches():
    g = GeM(p=3.0, parametrization="direct")
    param = g.p_value
    g.set_p(4.5)
    assert g.p_value is param and float(g.p.detach()) == pytest.approx(4.5)
    g.set_learn_p(False)
    assert g.learn_p is False and "p_value" in dict(g.named_buffers()) and float(g.p.detach()) == pytest.approx(4.5)
    g.set_learn_p(True)
    assert g.learn_p and float(g.p.detach()) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="p must be finite and > 0"):
        g.set_p(-1.0)
    fixed = GeM(p=3.0, learn_p=False)
    fixed.set_p(math.inf)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(fixed(x), x.amax((2, 3)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="parametrization must be one of"):
        GeM(parametrization="softplus")
    with pytest.raises(ValueError, match="p must be finite and > 0"):
        GeM(p=0.0)


def test_state_dict_round_trip_direct_buffer():
    a = GeM(p=2.5, learn_p=False, parametrization="direct")
    b = GeM(p=3.0, learn_p=False, parametrization="direct")
    b.load_state_dict(a.state_dict())
    assert float(b.p) == pytest.approx(2.5)
