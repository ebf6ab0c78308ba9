"""Errors of the data readers, and the bookkeeping of what a lenient reader skipped."""

import warnings


class DataError(ValueError):
    """A data file is missing, malformed or references an unreadable image.

    The message starts with ``<path>:<where>:`` — ``where`` is ``line N`` (1-based) for line
    formats, or a location such as ``images[12]`` inside a JSON document — so the user can open
    the file at the offending place.
    """

    def __init__(self, path, where, reason):
        self.path, self.where, self.reason = str(path), where, reason
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {reason}")


class SkipLog:
    """Counts what a reader skipped under ``skip_bad=True`` (by reason) and keeps the first
    ``keep`` messages, so a million bad lines do not become a million strings."""

    def __init__(self, skip_bad: bool, keep: int = 100):
        self.skip_bad = skip_bad
        self.counts: dict[str, int] = {}
        self.messages: list[str] = []
        self.keep = keep

    def bad(self, kind: str, path, where, reason) -> None:
        """Raises a :class:`DataError`, or records it when skipping."""
        err = DataError(path, where, reason)
        if not self.skip_bad:
            raise err
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.messages) < self.keep:
            self.messages.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"skipped {counts} (first: {self.messages[0]})" if self.total else ""

    def warn_if_any(self, what: str) -> None:
        if self.total:
            warnings.warn(f"{what}: {self.summary()}", RuntimeWarning, stacklevel=3)
