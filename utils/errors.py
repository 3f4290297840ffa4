"""The errors a user can fix, and the exit code each means.

Every command runs its ``main`` through ``utils.config.run_cli``, which prints a ``UserError``
as one line, ``error: <message>``, and exits with the error's code: 2 for bad input (a file,
flag or value that cannot be used, or an output refused before any work starts), 1 for work
that failed on the way (a write that failed, a diverged loss, a download that broke off). Any
other exception is a bug and keeps its traceback.

Each error also derives from the built-in exception a caller would expect (``InputError`` is
a ``ValueError``, ``WriteError`` an ``OSError``), so library code that catches those still
works.
"""

from __future__ import annotations

BAD_INPUT = 2
FAILED = 1


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is one line that names the file or flag."""

    exit_code = BAD_INPUT


class InputError(UserError, ValueError):
    """Bad input: a file, flag or value that cannot be used (exit 2)."""


class FailedError(UserError, RuntimeError):
    """Work that failed on the way through no fault in the code: a diverged loss, a broken
    download, another process holding a folder (exit 1)."""

    exit_code = FAILED


class WriteError(UserError, OSError):
    """An output that could not be written during the work (disk full, permissions; exit 1)."""

    exit_code = FAILED
