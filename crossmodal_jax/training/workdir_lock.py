"""One run per workdir: a lock file that refuses a second run, and that a crashed run does not leave
stuck.

Two `main` runs on one workdir (a scheduler requeueing a job whose first attempt still runs) write
every metrics row twice and save over each other's checkpoints, or kill each other inside orbax.
So a run holds `<workdir>/run.lock` (created atomically; in multi-process runs process 0 holds
it) and a second run is refused in one line naming the holder's host and process. A lock left by
a run that died without releasing it is stale when its process is gone (same host) or when its
heartbeat, the file's modification time, refreshed every HEARTBEAT_S by the holder, is older
than STALE_AFTER_S (another host, whose processes cannot be asked): it is taken over with a
warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import AbstractContextManager, nullcontext

import jax

from crossmodal_jax.errors import UserError

log = logging.getLogger("crossmodal_jax")

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # vanished, or caught between create and write
        return {}


def stale_reason(holder: dict, path: str, *, now: float | None = None) -> str:
    """Why the lock at `path` held by `holder` is stale ("" if it is live)."""
    now = time.time() if now is None else now
    try:
        age = now - os.path.getmtime(path)
    except OSError:
        return "the lock file vanished"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _process_alive(holder["pid"]):
            return f"process {holder['pid']} on this host is gone"
        return ""
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age:.0f} s"
    return ""


class WorkdirLock:
    """Held from `acquire` to `release`; a daemon thread refreshes its heartbeat meanwhile."""

    def __init__(self, path: str, heartbeat_s: float = HEARTBEAT_S):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # taken over or removed: nothing to refresh
                return

    def release(self) -> None:
        self._stop.set()
        if _holder(self.path).get("pid") == os.getpid():
            try:
                os.remove(self.path)
            except OSError:
                pass

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(workdir: str, heartbeat_s: float = HEARTBEAT_S) -> WorkdirLock:
    """Take `<workdir>/run.lock` (the workdir must exist), or raise a one-line UserError naming
    the run that holds it; a stale lock is taken over with a warning."""
    path = os.path.join(workdir, LOCK_FILE)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(3):  # lost races against another taker are retried
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            reason = stale_reason(holder, path)
            if not reason:
                since = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", os.path.getmtime(path)))
                )
                raise UserError(
                    f"workdir {workdir} is in use by process {holder.get('pid', '?')} on host "
                    f"{holder.get('host', '?')} (since {since}): one run per workdir; wait for "
                    f"it or stop it (a crashed run's lock, {path}, is taken over by itself)"
                ) from None
            log.warning("workdir %s: taking over the lock of a dead run (%s)", workdir, reason)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return WorkdirLock(path, heartbeat_s)
    raise UserError(f"workdir {workdir}: could not take {path} (other runs keep taking it)")


def run_lock(workdir: str) -> AbstractContextManager:
    """The lock a run holds on its workdir: process 0 takes it for every process of the run."""
    return acquire(workdir) if jax.process_index() == 0 else nullcontext()
