"""Killed and preempted runs, driven through `main` in a subprocess (signals need a real process)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from cli_helpers import TIMING_KEYS, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = subprocess_env(2)


def main_cmd(workdir, data_dir, steps=40):
    return [
        sys.executable,
        "-m",
        "crossmodal_jax.main",
        # A residual-VQ tokenizer with quantizer dropout and VQGAN's discriminator from step 10:
        # two EMA codebooks, a random number of stages each step, the discriminator's params
        # and its step counter must all come back as they were.
        "--config=configs/vqdit_img.py:smoke,rvq",
        "--config.tokenizer.model.quantizer_dropout=0.5",
        "--config.tokenizer.adversarial.weight=0.5",
        "--config.tokenizer.adversarial.start_step=10",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.stages=('tokenizer',)",
        f"--config.tokenizer.train.steps={steps}",
        "--config.tokenizer.train.checkpoint_every=5",
        # A weight EMA that differs from the weights, so resuming must restore it too.
        "--config.tokenizer.train.ema_decay=0.9",
    ]


def rows_by_step(workdir):
    """The last logged row of each step (a resumed run logs again from its checkpoint)."""
    with open(os.path.join(workdir, "tokenizer", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows}


def logged_steps(workdir):
    path = os.path.join(workdir, "tokenizer", "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def start_and_wait_for_step(cmd, workdir, min_step, timeout=300, min_logged=0, **popen):
    """Start `cmd`; return once a checkpoint >= min_step exists and a step >= min_logged is logged."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    ckpts = os.path.join(workdir, "tokenizer", "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (
            os.path.isdir(ckpts)
            and any(d.isdigit() and int(d) >= min_step for d in os.listdir(ckpts))
            and any(s >= min_logged for s in logged_steps(workdir) or [0])
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
    # Killed between checkpoints (step 12 or later logged, checkpoints every 5 steps): the rerun
    # repeats the steps after its checkpoint, and may find an async save cut short.
    proc = start_and_wait_for_step(main_cmd(cut_dir, data_dir), cut_dir, min_step=10, min_logged=12)
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
    # The final checkpoints are bitwise equal: params, optimizer, codebook statistics, weight EMA
    # and step, and the data iterator's position.
    ref_state, cut_state = (final_checkpoint(d) for d in (ref_dir, cut_dir))
    assert jax.tree.structure(ref_state) == jax.tree.structure(cut_state)
    jax.tree.map(np.testing.assert_array_equal, ref_state, cut_state)
    assert "stages_1" in ref_state["model_state"]["vq_stats"]["quantizer"]
    assert int(ref_state["model_state"]["adversarial"]["step"]) == 40
    assert "discriminator" in ref_state["params"]
    active = [r["active_stages"] for r in rows_by_step(ref_dir).values() if "active_stages" in r]
    assert 1.0 in active and 2.0 in active  # the dropout fired on some steps, not on others
    ema, params = (jax.tree.leaves(ref_state[k]) for k in ("ema_params", "params"))
    assert any(not np.array_equal(e, p) for e, p in zip(ema, params, strict=True))  # a real EMA
    assert final_data_state(ref_dir) == final_data_state(cut_dir)


def final_checkpoint(workdir, step=40):
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(os.path.join(workdir, "tokenizer", "checkpoints", str(step), "state"))
    return jax.tree.map(np.asarray, state)


def final_data_state(workdir, step=40):
    folder = os.path.join(workdir, "tokenizer", "checkpoints", str(step), "data")
    names = [n for n in os.listdir(folder) if n.startswith("process_")]  # grain's JSON state
    assert names
    return {name: open(os.path.join(folder, name), "rb").read() for name in names}


def test_sigterm_or_sigint_saves_a_checkpoint_exits_zero_and_resumes(tmp_path):
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    cmd = main_cmd(workdir, data_dir, steps=100000)
    proc = start_and_wait_for_step(cmd, workdir, min_step=5)
    # A second run on the workdir in use (a requeue while the first still runs) is refused in
    # one line naming the holder, and writes nothing.
    rows_before = len(logged_steps(workdir))
    second = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr[-3000:]
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"is in use by process {proc.pid} on host" in second.stderr
    assert proc.poll() is None  # the first run goes on, its log not doubled
    assert logged_steps(workdir) == sorted(set(logged_steps(workdir)))
    assert len(logged_steps(workdir)) >= rows_before
    proc.send_signal(signal.SIGTERM)  # a scheduler's preemption
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGTERM" in out and "rerun the same command to resume" in out
    stopped = int(out.split("stopped at step ")[1].split("/")[0])
    assert saved_steps(workdir)[-1] == stopped

    # The same command resumes from there; Ctrl-C (SIGINT to the whole process group, as a
    # terminal sends it) stops it the same way.
    proc = start_and_wait_for_step(cmd, workdir, min_step=stopped + 5, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"[tokenizer] resuming from step {stopped}" in out
    assert "received SIGINT" in out and "rerun the same command to resume" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    stopped_again = int(out.split("stopped at step ")[1].split("/")[0])
    assert stopped_again >= stopped + 5 and saved_steps(workdir)[-1] == stopped_again
    assert not os.path.exists(os.path.join(workdir, "run.lock"))  # released on the way out


def saved_steps(workdir):
    ckpts = os.path.join(workdir, "tokenizer", "checkpoints")
    return sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
