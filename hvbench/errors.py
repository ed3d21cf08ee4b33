"""The one exception type that means "the user asked for something invalid", and how a bad
value is named in one line.

The CLI turns a `UserError` into a single line on stderr and exit code 2; anything else
reaching the CLI is a bug or a fault, reported in one line with its traceback in a log file
(`hvbench.cli.main`).
"""

from __future__ import annotations

import reprlib
from typing import Any


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Short(reprlib.Repr):
    """repr() that stops early: a YAML alias bomb expands to billions of items and a hand-edited
    record may hold a 10 MB string, neither of which may be formatted whole into a message."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 80, 80, 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6


_SHORT = _Short()


def shown(value: Any) -> str:
    """`value`'s repr for an error or warning line: at most about 100 characters, one line."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a repr that fails must not hide the error being reported
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= 120 else text[:117] + "..."
