"""How the end-to-end tests call the CLIs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Fake CPU devices of a CLI run: data-parallel (8-device sharding: tests/training/test_step.py).
# Every CLI test uses the same count, so the runs share compiled programs through the suite's
# compilation cache.
DEVICES = 2


def run_cli(module, *args, timeout=600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    return subprocess.run(
        [sys.executable, "-m", f"crossmodal_jax.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]
