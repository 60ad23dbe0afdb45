"""The pod launcher's commands, with a stand-in `gcloud` that records what it is asked to run."""

import os
import subprocess

from cli_helpers import ROOT


def _launch(tmp_path, slices: str, *flags: str) -> subprocess.CompletedProcess:
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", SLICES=slices)
    script = os.path.join(ROOT, "launch", "tpu_pod.sh")
    return subprocess.run(
        ["bash", script, "pod", "us-east5-a", *flags], env=env, capture_output=True, text=True
    )


def test_multislice_runs_main_on_every_worker_of_every_slice(tmp_path):
    flags = ["--config=configs/vqdit_img.py", "--config.mesh.dcn_shape.data=2"]
    result = _launch(tmp_path, "2", *flags)
    assert result.returncode == 0, result.stderr
    calls = sorted((tmp_path / "calls.txt").read_text().splitlines())
    assert len(calls) == 2
    for node, call in zip(("pod-0", "pod-1"), calls, strict=True):
        assert call.startswith(f"compute tpus tpu-vm ssh {node} --zone us-east5-a --worker=all")
        assert "crossmodal_jax.main --distributed --config=configs/vqdit_img.py" in call
        assert "--config.mesh.dcn_shape.data=2" in call


def test_one_slice_is_the_named_tpu_and_a_bad_slice_count_is_one_line(tmp_path):
    assert _launch(tmp_path, "1", "--config=configs/vqdit_img.py").returncode == 0
    assert " ssh pod --zone" in (tmp_path / "calls.txt").read_text()
    bad = _launch(tmp_path, "two", "--config=configs/vqdit_img.py")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "error: SLICES must be a positive integer, got 'two'"
    ]
