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
