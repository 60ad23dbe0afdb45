"""Killed and preempted runs, driven through `main` in a subprocess (signals need a real process)."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def main_cmd(workdir, data_dir, steps=40):
    return [
        sys.executable,
        "-m",
        "crossmodal_jax.main",
        "--config=configs/vqdit_img.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.stages=('tokenizer',)",
        f"--config.tokenizer.train.steps={steps}",
        "--config.tokenizer.train.checkpoint_every=5",
    ]


def rows_by_step(workdir):
    """The last logged row of each step (a resumed run logs again from its checkpoint)."""
    with open(os.path.join(workdir, "tokenizer", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: {k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows}


def start_and_wait_for_step(cmd, workdir, min_step, timeout=300):
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ckpts = os.path.join(workdir, "tokenizer", "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(ckpts) and any(
            d.isdigit() and int(d) >= min_step for d in os.listdir(ckpts)
        ):
            return proc
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never reached a checkpoint")


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    data_dir = str(tmp_path / "data")
    ref_dir, cut_dir = str(tmp_path / "ref"), str(tmp_path / "cut")
    ref = subprocess.run(
        main_cmd(ref_dir, data_dir), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = start_and_wait_for_step(main_cmd(cut_dir, data_dir), cut_dir, min_step=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(
        main_cmd(cut_dir, data_dir), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[tokenizer] resuming from step" in again.stdout
    assert rows_by_step(cut_dir) == rows_by_step(ref_dir)  # losses, metrics, lr: all equal
    with (
        open(os.path.join(ref_dir, "metrics.json")) as a,
        open(os.path.join(cut_dir, "metrics.json")) as b,
    ):
        assert json.load(a) == json.load(b)  # final test-split evaluation: same parameters


def test_sigterm_saves_a_checkpoint_exits_zero_and_resumes(tmp_path):
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    cmd = main_cmd(workdir, data_dir, steps=100000)
    proc = start_and_wait_for_step(cmd, workdir, min_step=5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "rerun the same command to resume" in out
    stopped = int(out.split("stopped at step ")[1].split("/")[0])
    steps = [
        int(d) for d in os.listdir(os.path.join(workdir, "tokenizer", "checkpoints")) if d.isdigit()
    ]
    assert max(steps) == stopped
    resumed = subprocess.run(
        main_cmd(workdir, data_dir, steps=stopped + 2),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"[tokenizer] resuming from step {stopped}" in resumed.stdout
