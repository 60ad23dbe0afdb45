"""What a user sees while a stage trains: metrics.jsonl, TensorBoard scalars/images, a progress line.

Only process 0 writes; other processes get a writer that does nothing, so callers need no `if`.
TensorBoard events come from tensorboardX (clu's writers import tensorflow, which we do not install).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

log = logging.getLogger("crossmodal_jax")


def quiet_library_logs() -> None:
    """Keep absl/orbax/jax/grain INFO chatter off the console, where the progress lines go."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MetricWriter:
    """Appends `<stage_dir>/metrics.jsonl` and writes TensorBoard events into `<stage_dir>/tb`."""

    def __init__(self, stage_dir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(stage_dir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(stage_dir, "tb"), flush_secs=10)
            self._jsonl = open(os.path.join(stage_dir, "metrics.jsonl"), "a")  # noqa: SIM115

    def scalars(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            row[k] = float(np.asarray(v))
            self._tb.add_scalar(k, row[k], int(step))
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def image(self, step: int, tag: str, image_HxWxC: np.ndarray) -> None:
        """A uint8 image (grid) into TensorBoard."""
        if self.enabled:
            self._tb.add_image(tag, np.asarray(image_HxWxC), int(step), dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


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

    def rate(self, step: int) -> float:
        if self._t0 is None or step <= self._s0:
            return float("nan")
        return (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)

    def line(self, step: int, scalars: dict[str, float]) -> str:
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        shown = " ".join(f"{k}={v:.4g}" for k, v in scalars.items() if k != "steps_per_sec")
        pct = 100.0 * step / max(self.total, 1)
        eta_s = format_duration(eta) if eta == eta else "?"
        return (
            f"[{self.stage}] {step}/{self.total} ({pct:.0f}%) {shown} | "
            f"{rate:.2f} steps/s | ETA {eta_s}"
        )


def image_grid(
    images_NxHxWxC: np.ndarray, cols: int, *, upscale: int = 1, pad: int = 1
) -> np.ndarray:
    """Tile uint8 images into one grid (nearest-neighbour upscaled, so 8x8 digits are visible)."""
    images = np.asarray(images_NxHxWxC)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 64, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(path: str, image_HxWxC: np.ndarray) -> None:
    from PIL import Image

    img = np.asarray(image_HxWxC)
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
