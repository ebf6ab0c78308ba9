"""A command that ends on a mistake of its user says so in one line; a bug keeps its traceback."""

import pytest

from fusedembed.errors import UserError, run_command
from fusedembed.inference import ModelError
from fusedembed.registry import UnknownNameError
from fusedembed.trainer.checkpoint import CheckpointError


def test_a_user_error_ends_the_command_in_one_line(capsys):
    def main():
        raise CheckpointError("checkpoint 'runs/x/last.pt' does not exist")

    with pytest.raises(SystemExit) as exit_:
        run_command(main, "python -m fusedembed_tool")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "python -m fusedembed_tool: error: checkpoint 'runs/x/last.pt' does not exist\n"


@pytest.mark.parametrize("result, status", [(0, 0), (3, 3), (None, 0), ({"train": 29783}, 0)])
def test_the_status_is_mains_int_result(result, status):
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: result, "prog")
    assert exit_.value.code == status


def test_a_bug_is_not_turned_into_a_message():
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 / 0, "prog")


def test_unknown_names_and_unloadable_models_are_user_errors():
    assert issubclass(UnknownNameError, UserError) and issubclass(ModelError, UserError)
    assert issubclass(ModelError, ValueError)          # as before: callers catching ValueError still do


def test_a_factory_refusing_its_config_is_named_in_one_line(capsys):
    from torch import nn

    from fusedembed.registry import Registries, spec

    regs = Registries()

    def trunk(width: int = 8):
        if width % 2:
            raise ValueError(f"width must be even, got {width}")
        return nn.Identity()

    def model(backbone: spec("backbone")):
        return regs.build("backbone", backbone)

    regs["backbone"].add("trunk", trunk, plugin="p")
    regs["model"].add("net", model, plugin="p")
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: regs.build("model", {"name": "net", "backbone": {"name": "trunk", "width": 3}}), "prog")
    assert exit_.value.code == 1
    # The innermost component, the one that refused, is named; the error keeps its type for callers.
    assert capsys.readouterr().err == "prog: error: backbone 'p/trunk': width must be even, got 3\n"
    with pytest.raises(ValueError, match="width must be even"):
        regs.build("backbone", {"name": "trunk", "width": 3})


def test_a_value_error_outside_any_factory_keeps_its_traceback():
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_command(main, "prog")
