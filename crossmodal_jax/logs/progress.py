"""The progress line of a training stage: step, scalars, step rate and ETA."""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Step rate and ETA over the steps taken in this process (excludes compile time of step 1)."""

    def __init__(self, stage: str, start_step: int, total_steps: int):
        self.stage, self.total = stage, total_steps
        self._t0, self._s0 = None, start_step

    def mark_started(self, step: int) -> None:
        """Call after the first (compiling) step so the rate reflects steady state."""
        self._t0, self._s0 = time.perf_counter(), step

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a profile flush) out of the step rate."""
        if self._t0 is not None:
            self._t0 += seconds

    def rate(self, step: int) -> float:
        if self._t0 is None or step <= self._s0:
            return float("nan")
        return (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)

    def line(self, step: int, scalars: dict[str, float], hardware: str = "") -> str:
        """'[stage] step/total (pct) scalars | rate steps/s[, hardware] | ETA'."""
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        shown = " ".join(f"{k}={v:.4g}" for k, v in scalars.items() if k != "steps_per_sec")
        pct = 100.0 * step / max(self.total, 1)
        eta_s = format_duration(eta) if eta == eta else "?"
        return (
            f"[{self.stage}] {step}/{self.total} ({pct:.0f}%) {shown} | "
            f"{rate:.2f} steps/s{', ' + hardware if hardware else ''} | ETA {eta_s}"
        )
