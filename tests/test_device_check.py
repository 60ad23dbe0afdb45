"""benchmarks/device_check.py at its CPU size (what a first GPU or TPU run prints, tiny): it runs,
and its last line holds every figure."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_device_check_runs_at_tiny_size_and_reports_every_figure():
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [sys.executable, "benchmarks/device_check.py", "--steps=2", "--sample_steps=4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["platform"] == "cpu" and out["devices"] == 2 and out["model"] == "DiT-tiny/2"
    assert out["batch"] % out["devices"] == 0 and out["images_per_s"] > 0
    assert out["achieved_tflops"] > 0 and out["planned_bytes_per_device"] > 0
    assert out["compile_cold_s"] > 0 and out["compile_warm_s"] > 0
    timed = out["attention"]["fwd_bwd_ms"]
    assert all(isinstance(timed[k], float) for k in ("xla", "einsum", "blocked")), timed
    assert out["sampler"]["images_per_s"] > 0 and out["sampler"]["ddim_steps"] == 4
