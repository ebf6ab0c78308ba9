"""Errors a user fixes by changing what they asked for (a recipe value, a file, a device): the
``fusedembed`` command prints their message on one line, without a traceback."""


class UserError(Exception):
    """Base of the errors whose message says what was wrong and what to do."""


class UsageError(UserError, ValueError):
    """A value that cannot be used here (``trainer.device=cuda`` without a GPU, ``eval`` on a
    recipe without evaluators)."""
