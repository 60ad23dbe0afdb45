"""Orbax checkpoints of one stage: {train state, data iterator}; restore-or-init with fallback.

Each stage keeps its own manager under `<workdir>/<stage>/checkpoints`. Saves are asynchronous (training
continues while arrays are written) and atomic (orbax writes to a temporary directory and renames), so a
killed run never leaves a half-written step behind. Restores go into a target tree of `ShapeDtypeStruct`s
with shardings, so a run restores onto whatever mesh it has now.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from crossmodal_jax.errors import UserError

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing a tree of arrays, as an orbax restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


class StageCheckpointer:
    """Saves and restores (state, data iterator) of one stage."""

    def __init__(self, directory: str, *, keep: int, save_every: int):
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=True,
                # Only whole steps count: a step whose directory is still temporary is invisible.
                cleanup_tmp_directories=True,
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def is_due(self, step: int) -> bool:
        """Whether `step` is on the checkpoint interval."""
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, data_iter: Any | None = None, *, force: bool = False):
        """Save if `step` is on the interval (or forced); returns whether a save started."""
        if not (force or self.is_due(step)):
            return False
        if step in self.manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, abstract_state: Any, data_iter: Any | None = None) -> tuple[int, Any] | None:
        """Restore the newest readable step into `abstract_state` (and `data_iter` in place).

        orbax's `latest_step()` does not skip a broken step, so try steps newest first. Once an
        older step restores, the unreadable newer ones are moved to `<stage>/broken_checkpoints/`
        (kept for inspection, out of the manager's way so the run can save those steps again).
        When no step restores, nothing is moved and the run stops: every step failing at once is
        more likely a mismatch (another code version, a lost file system) than corruption, and
        starting over from step 0 would waste the run. No checkpoint is ever deleted.
        Returns (step, state), or None when there is nothing to restore.
        """
        broken: list[tuple[int, Exception]] = []
        for step in reversed(self.all_steps()):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any unreadable step falls back to an older one
                broken.append((step, e))
                continue
            for bad_step, error in broken:
                self._set_aside(bad_step, error)
            return step, restored["state"]
        if broken:
            step, error = broken[0]
            raise UserError(
                f"no checkpoint in {self.directory} can be restored (newest: step {step}, "
                f"{_first_line(error)}); nothing was moved. Fix or move that directory to start "
                "the stage over"
            )
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        path = os.path.join(self.directory, str(step))
        broken = os.path.join(os.path.dirname(self.directory), "broken_checkpoints")
        target = os.path.join(broken, f"{step}-{int(time.time())}")
        log.warning(
            "checkpoint %s is unreadable (%s); moved to %s, restoring an older step",
            path,
            _first_line(error),
            target,
        )
        if jax.process_index() == 0 and os.path.exists(path):
            os.makedirs(broken, exist_ok=True)
            shutil.move(path, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
