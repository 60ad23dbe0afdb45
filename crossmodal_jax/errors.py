"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback.

Code raises `UserError` for problems the user can fix (a bad config value, a missing file); the CLIs
catch it and call `fail`. Bugs still raise ordinary exceptions with their tracebacks.
"""

from __future__ import annotations

import os
import sys
import traceback
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


def exit_alone(e: BaseException) -> NoReturn:
    """Exit one process of a multi-process run now, as `fail` would (a UserError: one line, code
    2; anything else: its traceback, code 1). A normal exit would first wait (5 minutes) at
    jax.distributed's shutdown barrier for the other processes, which never come: they wait in
    this process's next collective. Exiting without it lets a launcher stop the others at once
    (launch/local_multiprocess.sh does), else the coordinator's missed heartbeats end them."""
    if isinstance(e, UserError):
        print(f"error: {e}", file=sys.stderr)
    else:
        traceback.print_exception(e)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2 if isinstance(e, UserError) else 1)
