"""Switching a module to eval for a moment without losing its submodules' own modes."""

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module.eval()`` inside the block; on exit every submodule gets its own training flag
    back. ``module.train(was_training)`` would not: it sets all of them, undoing e.g. the
    trainer's ``bn_eval`` (BatchNorm frozen inside a training model)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training
