"""Errors a user fixes by changing what they asked for (a recipe value, a file, a device): the
``fusedembed`` command, and every command a plugin runs through :func:`run_command`, prints their
message on one line, without a traceback (:func:`user_message`)."""

import sys
from typing import Callable, NoReturn, Optional


class UserError(Exception):
    """Base of the errors whose message says what was wrong and what to do."""


class UsageError(UserError, ValueError):
    """A value that cannot be used here (``trainer.device=cuda`` without a GPU, ``eval`` on a
    recipe without evaluators)."""


def user_message(err: BaseException) -> Optional[str]:
    """The one-line message of an error its user fixes: a UserError's, or that of a ValueError a
    component's factory raised on its config (the registry marks it with the component, the
    innermost one when builds nest); None for anything else, a bug, which keeps its traceback."""
    if isinstance(err, UserError):
        return str(err)
    component = getattr(err, "fusedembed_component", None)
    if isinstance(err, ValueError) and component is not None:
        return f"{component}: {err}"
    return None


def report(err: BaseException, prog: str) -> bool:
    """Prints ``PROG: error: MESSAGE`` for an error with a :func:`user_message`; False (nothing
    printed) for any other, which the caller re-raises."""
    message = user_message(err)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr)
    return message is not None


def run_command(main: Callable[[], object], prog: str) -> NoReturn:
    """Runs a command-line program's ``main()`` and exits as the ``fusedembed`` command does: an
    error with a :func:`user_message` prints ``PROG: error: MESSAGE`` and exits with status 1;
    otherwise main's int result is the status (anything else, None included, is 0).

    For a plugin's ``python -m`` entry point: ``if __name__ == "__main__": run_command(main,
    "python -m fusedembed_myplugin")``."""
    try:
        status = main()
    except (UserError, ValueError) as err:
        if not report(err, prog):
            raise
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
