"""Errors meant for people: what went wrong, where, and what to do next.

The command line prints a ``UserError`` as ``rounds: error: <where>: <message>`` plus
a ``hint:`` line, and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, a wrong path, a refused request."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, file: str | None = None,
                 line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = file
        self.line = line
        self.field = field

    @property
    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class FormatVersionError(UserError):
    """A session or data file written by a newer ``rounds`` than this one."""


class SessionLockedError(UserError):
    """Another process already holds the writer lock."""
