"""launch/local_multiprocess.sh: 2 processes x 4 CPU devices train exactly like 1 process x 8.

Both runs see the same 8-device data-parallel mesh. The loss of a step is the same number when
  - the global batch holds the same examples in the same rows whatever the process count (the
    data pipeline deals out whole local batches of one global stream, in process order), and
  - the random draws (diffusion time, noise, condition drop) depend only on the key and the
    global shape, not on how the array is split over devices or processes;
what may differ is the order of floating-point reductions across devices, hence the tolerance.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
# Two logged steps per stage (the second shows the first update agreed); one checkpoint at the end.
FLAGS = [
    "--config=configs/vqdit_img.py:smoke",
    *(
        f"--config.{stage}.train.{field}={value}"
        for stage in ("tokenizer", "generator")
        for field, value in (("steps", 2), ("log_every", 1), ("checkpoint_every", 100))
    ),
]
TIMING_KEYS = {"steps_per_sec"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def without_device_count(xla_flags: str) -> str:
    return " ".join(f for f in xla_flags.split() if "device_count" not in f)


def test_two_processes_log_the_same_losses_as_one(tmp_path):
    data = f"--config.data.data_dir={tmp_path / 'data'}"
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    base["XLA_FLAGS"] = without_device_count(base.get("XLA_FLAGS", ""))
    one_env = dict(base, XLA_FLAGS=base["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
    two_env = dict(base, PYTHON=sys.executable, PORT=str(free_port()), DEVICES_PER_PROCESS="4")
    # Started together: XLA compiles on one core per process, so the runs overlap on two cores.
    runs = {
        "one": subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crossmodal_jax.main",
                *FLAGS,
                data,
                f"--workdir={tmp_path / 'one'}",
            ],
            cwd=ROOT,
            env=one_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        "two": subprocess.Popen(
            ["bash", LAUNCHER, "2", *FLAGS, data, f"--workdir={tmp_path / 'two'}"],
            cwd=ROOT,
            env=two_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    }
    outputs = {}
    try:
        for name, proc in runs.items():
            outputs[name] = proc.communicate(timeout=600)[0]
    finally:
        for proc in runs.values():
            proc.kill()
    for name, proc in runs.items():
        assert proc.returncode == 0, f"{name}:\n{outputs[name][-4000:]}"
    assert "over 8 devices (cpu), 2 process(es)" in outputs["two"]
    assert "[p1]" in outputs["two"]

    for stage in ("tokenizer", "generator"):
        one = read_jsonl(tmp_path / "one" / stage / "metrics.jsonl")
        two = read_jsonl(tmp_path / "two" / stage / "metrics.jsonl")
        assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2], stage
        for row_one, row_two in zip(one, two, strict=True):
            assert row_one.keys() == row_two.keys()
            for key in sorted(row_one.keys() - TIMING_KEYS):
                np.testing.assert_allclose(
                    row_two[key],
                    row_one[key],
                    rtol=1e-5,
                    atol=1e-7,
                    err_msg=f"{stage} step {row_one['step']}: {key}",
                )
    # Only process 0 writes the run's reports.
    assert os.path.isfile(tmp_path / "two" / "metrics.json")
