"""Errors that the CLI turns into one clear message and exit status 2."""

from __future__ import annotations


class SelectbenchError(Exception):
    """A problem with the user's input, config or usage: reported without a traceback, exit status 2."""


class InputError(SelectbenchError):
    """Bad pool data: the message names the file, the row and the field."""

    def __init__(self, source: str, where: str | None, field: str | None, problem: str, hint: str = "") -> None:
        self.source, self.where, self.field, self.problem = source, where, field, problem
        parts = [source]
        if where:
            parts.append(where)
        if field:
            parts.append(f"field {field!r}")
        message = ": ".join([", ".join(parts), problem])
        super().__init__(f"{message}\n  {hint}" if hint else message)
