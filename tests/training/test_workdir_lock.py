"""One run per workdir: the lock refuses a live holder in one line, takes over a dead one's."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from crossmodal_jax.errors import UserError
from crossmodal_jax.training import workdir_lock
from crossmodal_jax.training.workdir_lock import LOCK_FILE, acquire


def _write_lock(workdir, host, pid, age_s=0.0):
    path = os.path.join(workdir, LOCK_FILE)
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid, "since": time.time() - age_s}, f)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_live_holder_refuses_a_second_run_in_one_line_and_release_frees_it(tmp_path):
    lock = acquire(str(tmp_path))
    with pytest.raises(UserError) as e:
        acquire(str(tmp_path))
    message = str(e.value)
    assert f"in use by process {os.getpid()} on host {socket.gethostname()}" in message
    assert "\n" not in message
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    acquire(str(tmp_path)).release()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    _write_lock(tmp_path, socket.gethostname(), int(dead.stdout))
    with acquire(str(tmp_path)) as lock:
        assert json.load(open(lock.path))["pid"] == os.getpid()
    assert "taking over the lock of a dead run" in caplog.text


def test_another_hosts_lock_is_stale_only_without_a_heartbeat(tmp_path, caplog):
    _write_lock(tmp_path, "other-host", 12345, age_s=10)
    with pytest.raises(UserError, match="in use by process 12345 on host other-host"):
        acquire(str(tmp_path))
    _write_lock(tmp_path, "other-host", 12345, age_s=workdir_lock.STALE_AFTER_S + 60)
    acquire(str(tmp_path)).release()
    assert "no heartbeat for" in caplog.text


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    lock = acquire(str(tmp_path), heartbeat_s=0.05)
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - os.path.getmtime(lock.path) < 10
    lock.release()
