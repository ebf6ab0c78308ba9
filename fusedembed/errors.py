"""Errors a user fixes by changing what they asked for (a recipe value, a file, a device): the
``fusedembed`` command, and every command a plugin runs through :func:`run_command`, prints their
message on one line, without a traceback."""

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Base of the errors whose message says what was wrong and what to do."""


class UsageError(UserError, ValueError):
    """A value that cannot be used here (``trainer.device=cuda`` without a GPU, ``eval`` on a
    recipe without evaluators)."""


def run_command(main: Callable[[], object], prog: str) -> NoReturn:
    """Runs a command-line program's ``main()`` and exits as the ``fusedembed`` command does: a
    UserError prints ``PROG: error: MESSAGE`` and exits with status 1; otherwise main's int result
    is the status (anything else, None included, is 0).

    For a plugin's ``python -m`` entry point: ``if __name__ == "__main__": run_command(main,
    "python -m fusedembed_myplugin")``."""
    try:
        status = main()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
