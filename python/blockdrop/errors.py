"""The errors a user can cause, as one small hierarchy.

Every one subclasses ``ValueError`` (the library's convention for bad input) and carries a message
that names the argument or file and says what was expected. The command line prints the message
and exits with status 2; ``--debug`` shows the traceback instead.

* :class:`BlockDropError` -- the base;
* :class:`FileFormatError` -- a file that exists but cannot be used (garbage, empty, truncated,
  another format);
* :class:`IncompatibleError` -- files or arguments that are fine alone but do not fit together
  (a checkpoint's classes vs the data's, a run directory that holds another run).
"""

from __future__ import annotations

import os

__all__ = ["BlockDropError", "FileFormatError", "IncompatibleError"]


class BlockDropError(ValueError):
    """A user-facing error; the message names what is wrong."""


class FileFormatError(BlockDropError):
    """``path`` exists but is not what was expected: ``"<path>: expected <what> (<detail>)"``."""

    def __init__(self, path: str | os.PathLike[str], expected: str, detail: str = "") -> None:
        self.path = str(path)
        msg = f"{self.path}: expected {expected}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class IncompatibleError(BlockDropError):
    """Inputs that do not fit together."""
