"""Where a stage's scalars, images and texts go: `<stage>/metrics.jsonl` and TensorBoard events.

Only process 0 writes; other processes get a writer that does nothing, so callers need no `if`.
TensorBoard events come from tensorboardX (clu's writers import tensorflow, which we do not install).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np


def quiet_library_logs() -> None:
    """Keep absl/orbax/jax/grain INFO chatter off the console, where the progress lines go."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)


def write_json(path: str, value: Any, **dump_kwargs: Any) -> None:
    """Write `path` whole or not at all (a temporary file renamed over it): another process that
    reads it while it is written, or a run killed meanwhile, never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, **dump_kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the dump failed: leave nothing behind
            os.remove(tmp)


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


class PrefixedWriter:
    """A MetricWriter whose tags and scalar names start with `prefix/`: one stage's writer shared
    by several tasks (a joint generator's summaries)."""

    def __init__(self, writer: MetricWriter, prefix: str):
        self.writer, self.prefix = writer, prefix

    @property
    def enabled(self) -> bool:
        return self.writer.enabled

    def scalars(self, step: int, scalars: dict[str, Any]) -> None:
        self.writer.scalars(step, {f"{self.prefix}/{k}": v for k, v in scalars.items()})

    def image(self, step: int, tag: str, image_HxWxC: np.ndarray) -> None:
        self.writer.image(step, f"{self.prefix}/{tag}", image_HxWxC)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.text(step, f"{self.prefix}/{tag}", text)
