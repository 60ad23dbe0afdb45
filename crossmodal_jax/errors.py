"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback.

Code raises `UserError` for problems the user can fix (a bad config value, a missing file); the CLIs
catch it and call `fail`. Bugs still raise ordinary exceptions with their tracebacks.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(ValueError):
    """A problem with the user's input: config, files or data."""


class CheckpointError(UserError):
    """A weights file or state dict that cannot be converted (models/torch_convert.py)."""


def one_line(e: BaseException | str) -> str:
    """The first non-empty line of an exception's message (absl/ml_collections add context lines)."""
    text = str(e).strip() or type(e).__name__
    return next(line.strip() for line in text.splitlines() if line.strip())


def last_line(e: BaseException | str) -> str:
    """The most specific line of a message that wraps another error (a traceback, an [Errno ...])."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    for line in lines:
        if line.startswith("[Errno"):
            return line
    return lines[-1] if any("Traceback" in line for line in lines) else lines[0]


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
