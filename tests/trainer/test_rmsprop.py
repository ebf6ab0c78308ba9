"""The RMSProp choice of the optimizer factory."""

import pytest
import torch

from fusedembed.recipe import OptimizerConfig
from fusedembed.trainer.optim import make_optimizer, param_groups


def test_rmsprop_step_follows_its_update_rule():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    cfg = OptimizerConfig(name="rmsprop", alpha=0.9, eps=1e-8)
    opt = make_optimizer(param_groups([("w", w)], 0.01, cfg), cfg)
    assert isinstance(opt, torch.optim.RMSprop)
    mean_sq = torch.zeros(3)
    expected = w.detach().clone()
    for grad in (torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])):
        w.grad = grad.clone()
        opt.step()
        mean_sq = 0.9 * mean_sq + 0.1 * grad ** 2
        expected -= 0.01 * grad / (mean_sq.sqrt() + 1e-8)
        torch.testing.assert_close(w.detach(), expected)


def test_rmsprop_alpha_is_checked():
    w = torch.nn.Parameter(torch.zeros(2))
    cfg = OptimizerConfig(name="rmsprop", alpha=1.0)
    with pytest.raises(ValueError, match=r"trainer.optimizer.alpha must be in \[0, 1\), got 1.0"):
        make_optimizer(param_groups([("w", w)], 0.01, cfg), cfg)
