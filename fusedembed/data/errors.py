"""Errors of the data readers, and the bookkeeping of what a lenient reader skipped."""

import json
import warnings
from pathlib import Path

from ..errors import UserError


class DataError(UserError, ValueError):
    """A data file is missing, malformed or references an unreadable image.

    The message starts with ``<path>:<where>:`` — ``where`` is ``line N`` (1-based) for line
    formats, or a location such as ``images[12]`` inside a JSON document — so the user can open
    the file at the offending place.
    """

    def __init__(self, path, where, reason):
        self.path, self.where, self.reason = str(path), where, reason
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {reason}")


def not_utf8(path) -> "DataError":
    """The error for a text file that does not decode as UTF-8 (call it on catching a
    ``UnicodeDecodeError``): names the file, the line and the byte offset of the first bad
    byte (found by decoding the file's bytes again, only on this error path)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return DataError(path, f"line {line}", f"not UTF-8 text: byte {err.start} "
                         f"(0x{data[err.start]:02x}): {err.reason}; save the file as UTF-8")
    return DataError(path, None, "not UTF-8 text; save the file as UTF-8")


def read_text(path) -> str:
    """A whole UTF-8 text file; a :class:`DataError` naming it when it is missing or not
    UTF-8 (the line and byte offset of the first bad byte)."""
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except UnicodeDecodeError:
        raise not_utf8(Path(path).expanduser()) from None


def read_json(path):
    """A UTF-8 JSON file, parsed; a :class:`DataError` naming it when it is missing, not UTF-8 or
    not JSON (the line and column of the first error)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(path, f"line {err.lineno} column {err.colno}", f"invalid JSON: {err.msg}") from None


def text_lines(path):
    """(1-based line number, line) of a UTF-8 text file; a :class:`DataError` naming the
    file, line and byte offset when it is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


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
