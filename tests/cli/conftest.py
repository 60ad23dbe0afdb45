"""What the end-to-end tests share: `run_cli`, and trained smoke workdirs built once per test run.

A smoke workdir (`smoke_workdir("configs/img2txt.py:smoke")`) is trained the first time a test
asks for it and reused by every later test of the run, on any pytest-xdist worker: workers meet
in the run's common temporary folder, and a file lock makes the first one train while the others
wait. Tests treat these workdirs as read-only; one that trains further copies it first.
"""

import re
import shutil

import pytest
from cli_helpers import run_cli
from filelock import FileLock

from configs import shapes_joint


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id):
    """A folder common to every worker of this test run (the workers' temp folders' parent)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if worker_id != "master" else root


@pytest.fixture(scope="session")
def data_dir(shared_dir):
    """One embedded-dataset cache for every CLI test of the run (builds are race-safe)."""
    path = shared_dir / "datasets"
    path.mkdir(exist_ok=True)
    return str(path)


def data_flags(config: str, data_dir: str) -> list[str]:
    """The flags that point a config's datasets at the suite's cache (each task's of a joint one)."""
    if config.startswith("configs/shapes_joint.py"):
        return [f"--config.tasks.{t}.data.data_dir={data_dir}" for t in shapes_joint.TASK_CONFIGS]
    return [f"--config.data.data_dir={data_dir}"]


@pytest.fixture(scope="session")
def smoke_workdir(shared_dir, data_dir):
    """config[:variant] -> (workdir, flags that trained it, main's output) of its smoke run."""

    def trained(config: str):
        name = re.sub(r"\W+", "_", config)
        workdir = shared_dir / "workdirs" / name
        flags = [f"--config={config}", f"--workdir={workdir}", *data_flags(config, data_dir)]
        log = workdir.with_suffix(".log")
        with FileLock(str(workdir) + ".lock"):
            if not log.exists():
                shutil.rmtree(workdir, ignore_errors=True)
                result = run_cli("main", *flags)
                assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
                log.write_text(result.stdout)
        return str(workdir), flags, log.read_text()

    (shared_dir / "workdirs").mkdir(exist_ok=True)
    return trained
