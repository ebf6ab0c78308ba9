import pytest
from torch import nn

from fusedembed.nn import eval_mode


def modes(model):
    return [m.training for m in model.modules()]


def test_eval_mode_evaluates_inside_and_gives_each_submodule_its_own_mode_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout()).train()
    model[1].eval()                                           # a frozen BatchNorm in a training model
    before = modes(model)
    with eval_mode(model):
        assert not any(modes(model))
    assert modes(model) == before == [True, True, False, True]


def test_eval_mode_restores_the_modes_when_the_block_raises():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError("boom")
    assert all(modes(model))
