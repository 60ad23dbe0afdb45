"""What stops a run cleanly: preemption signals and non-finite losses.

SIGTERM/SIGINT (a scheduler's preemption, Ctrl-C) set a flag; the loop finishes the step it is on,
saves a checkpoint and raises `Preempted`, which `main` turns into exit code 0. With several
processes the flag is OR-reduced across them every step, so all of them stop at the same step.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import jax
import numpy as np

from crossmodal_jax.errors import UserError

log = logging.getLogger("crossmodal_jax")


class Preempted(Exception):
    """Raised after the checkpoint of a preempted run has been written."""


class NonFiniteLoss(UserError):
    """The loss or gradient became NaN/Inf; nothing from that state was saved."""


class PreemptionGuard:
    """Context manager that turns SIGTERM/SIGINT into a polite stop request."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling there
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if not self._requested:
            log.info(
                "received %s: finishing this step, then saving a checkpoint",
                signal.Signals(signum).name,
            )
        self._requested = True

    def should_stop(self) -> bool:
        """True on every process as soon as any process was signalled."""
        if jax.process_count() == 1:
            return self._requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self._requested))
        return bool(np.any(flags))


def check_finite(stage: str, step: int, metrics: dict) -> None:
    """Raise NonFiniteLoss naming the step and the metric when a step's loss/gradient blew up."""
    values = jax.device_get({k: metrics[k] for k in ("nonfinite", "loss", "grad_norm")})
    if values["nonfinite"] > 0:
        bad = [k for k in ("loss", "grad_norm") if not np.isfinite(values[k])]
        raise NonFiniteLoss(
            f"[{stage}] non-finite {' and '.join(bad)} at step {step} "
            f"(loss={values['loss']}, grad_norm={values['grad_norm']}); nothing from this state "
            f"was saved. Lower {stage}.train.learning_rate, or set "
            f"--config.{stage}.train.skip_nonfinite=True to skip such updates"
        )
