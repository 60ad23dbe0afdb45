"""End to end through the CLIs: main on the smoke config (both stages, resume, two processes),
sample, errors."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import ROOT, TIMING_KEYS, read_jsonl, run_cli
from PIL import Image

SMOKE = "--config=configs/vqdit_img.py:smoke"


@pytest.fixture
def smoke_run(smoke_workdir):
    return smoke_workdir(SMOKE.removeprefix("--config="))


def test_smoke_run_writes_every_artifact(smoke_run):
    workdir, _, first = smoke_run
    for stage in ("tokenizer", "generator"):
        rows = read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
        assert [r["step"] for r in rows] == [2, 4, 6]
        assert all(
            np.isfinite(r["loss"]) and "grad_norm" in r and "learning_rate" in r for r in rows
        )
        assert os.listdir(os.path.join(workdir, stage, "checkpoints"))
        assert any(
            f.startswith("events.out.tfevents")
            for f in os.listdir(os.path.join(workdir, stage, "tb"))
        )
    assert "codebook_usage" in read_jsonl(os.path.join(workdir, "tokenizer", "metrics.jsonl"))[0]
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in (
        "test_psnr_db",
        "test_codebook_usage",
        "test_codebook_perplexity",
        "sample_digit_accuracy",
        "test_classifier_fd",
        "test_sample_class_accuracy",
        "test_real_class_accuracy",
    ):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["test_real_class_accuracy"] > 0.85  # the feature classifier knows real digits
    assert os.path.isfile(os.path.join(workdir, "samples.png"))
    report = open(os.path.join(workdir, "report.html")).read()
    assert "test_psnr_db" in report and 'alt="samples.png"' in report
    assert os.path.isfile(os.path.join(workdir, "tokenizer", "reconstructions_000006.png"))
    assert os.path.isfile(os.path.join(workdir, "generator", "samples_000006.png"))
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["task"] == "text2image"
    assert "ETA" in first


def test_rerun_resumes_at_saved_step(smoke_run, tmp_path):
    """The resumed steps also show what the logs say of the hardware: throughput and MFU in
    every logged row, an evaluation every 4 steps, and a profile of steps 7-8."""
    shared, flags, _ = smoke_run
    workdir = str(tmp_path / "run")  # trained further: a copy of the shared smoke run
    shutil.copytree(shared, workdir)
    flags = [f"--workdir={workdir}" if f.startswith("--workdir=") else f for f in flags]
    again = run_cli(
        "main",
        *flags,
        "--config.generator.train.steps=10",
        "--config.eval.every=4",
        "--config.eval.every_examples=32",
        "--config.profile_steps=7,8",
        "--config.peak_tflops=0.5",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[tokenizer] already trained (6/6 steps)" in again.stdout
    assert "[generator] resuming from step 6" in again.stdout
    rows = read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8, 10]
    for row in rows[3:]:  # the resumed run's rows
        if "loss" in row:
            assert row["examples_per_sec"] == pytest.approx(16 * row["steps_per_sec"])
            assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 0.5)
    evaluations = [r for r in rows if "eval/test_loss" in r]
    assert [r["step"] for r in evaluations] == [8]
    assert {"eval/test_classifier_fd", "eval/test_sample_class_accuracy"} <= evaluations[0].keys()
    assert "[generator] 8/10 evaluation" in again.stdout and "MFU" in again.stdout
    traces = [
        f
        for _, _, files in os.walk(os.path.join(workdir, "generator", "profile"))
        for f in files
        if f.endswith(".xplane.pb")
    ]
    assert traces and "profile of steps 7-8" in again.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_a_hybrid_mesh_log_the_same_losses_as_one(smoke_run, tmp_path):
    """launch/local_multiprocess.sh: 2 processes x 2 CPU devices on a hybrid mesh (the data axis
    across the processes, as across slices over DCN, FSDP over each process's 2 devices;
    `mesh.dcn_shape`) train exactly like the smoke run's 1 process x 2 data-parallel devices. The
    loss of a step is the same number when
      - the global batch holds the same examples in the same rows whatever the process count (the
        pipeline deals out whole local batches of one global stream, in process order), and
      - the random draws (diffusion time, noise, condition drop) depend only on the key and the
        global shape, not on how the array is split over devices or processes;
    what may differ is the order of floating-point reductions across devices, hence the tolerance.
    """
    workdir, flags, _ = smoke_run
    two_dir = tmp_path / "two"
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    # 2 devices a process, not 4: the same layout at 50 s less of the suite's 15 minutes.
    env.update(DEVICES_PER_PROCESS="2", JAX_PLATFORMS="cpu")
    launcher = os.path.join(ROOT, "launch", "local_multiprocess.sh")
    same_flags = [f for f in flags if not f.startswith("--workdir=")]
    hybrid = ["--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2"]
    hybrid.append("--config.mesh.dcn_shape.data=2")
    # Training is what is compared: no test-split evaluation (a fifth of a smoke run).
    two = subprocess.run(
        [
            "bash",
            launcher,
            "2",
            *same_flags,
            *hybrid,
            "--config.eval.at_end=False",
            f"--workdir={two_dir}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stdout[-4000:] + two.stderr[-2000:]
    assert (
        "mesh {'data': 2, 'fsdp': 2, 'sequence': 1, 'tensor': 1} over 4 devices (cpu), 2 process(es)"
        in two.stdout
    )
    assert "[p1]" in two.stdout
    for stage in ("tokenizer", "generator"):
        one = {
            row["step"]: row for row in read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
        }
        rows = read_jsonl(two_dir / stage / "metrics.jsonl")
        assert [r["step"] for r in rows] == [2, 4, 6], stage
        for row_two in rows:
            row_one = one[row_two["step"]]
            assert row_one.keys() == row_two.keys()
            for key in sorted(row_one.keys() - TIMING_KEYS):
                np.testing.assert_allclose(
                    row_two[key],
                    row_one[key],
                    rtol=1e-5,
                    atol=1e-7,
                    err_msg=f"{stage} step {row_two['step']}: {key}",
                )
    # Only process 0 writes the run's reports; eval.at_end=False leaves the metrics empty.
    assert json.load(open(two_dir / "metrics.json")) == {}
    assert os.path.isfile(two_dir / "report.html")


def test_sample_cli_writes_one_png_per_prompt(smoke_run, tmp_path):
    workdir, _, _ = smoke_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the digit seven\nthe digit one\na handwritten two\n")
    out = tmp_path / "out"
    result = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png"]
    image = np.asarray(Image.open(out / "000000.png"))
    assert image.shape == (8, 8) and image.dtype == np.uint8


def test_sample_cli_missing_input_is_one_line(smoke_run, tmp_path):
    workdir, _, _ = smoke_run
    result = run_cli(
        "sample",
        f"--workdir={workdir}",
        f"--input={tmp_path / 'nope.txt'}",
        f"--output={tmp_path / 'out'}",
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: input file not found: {tmp_path / 'nope.txt'}"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.tokenizer.trian.steps=3",
            "unknown config key 'tokenizer.trian.steps'; did you mean 'tokenizer.train.steps'?",
        ),
        ("--config.tokenizer.train.steps=abc", "--config.tokenizer.train.steps=abc"),
        ("--config.tokenizer.train.batch_size=15", "not divisible by the data-parallel size"),
        ("--config.data.name=nope", "unknown dataset 'nope'"),
        ("--config.stages=('tokenizer','decoder')", "unknown stage 'decoder'"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, override, expected):
    workdir = tmp_path / "run"
    result = run_cli("main", SMOKE, f"--workdir={workdir}", override)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert not workdir.exists()


def test_sample_cli_rejects_non_utf8_input_and_a_wrong_workdir(smoke_run, tmp_path):
    workdir, _, _ = smoke_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"the digit \xff\xfe seven\n")
    result = run_cli(
        "sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={tmp_path / 'out'}"
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: input file {prompts} is not UTF-8 text (invalid start byte)"
    ]
    result = run_cli(
        "sample", f"--workdir={tmp_path}", f"--input={prompts}", f"--output={tmp_path / 'out'}"
    )
    assert result.returncode != 0 and "no config.json in workdir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_workdir_of_another_config_is_refused_with_a_diff(smoke_run):
    workdir, flags, _ = smoke_run
    before = sorted(os.listdir(workdir))
    result = run_cli("main", *flags, "--config.tokenizer.model.num_codes=64")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert "holds a run with a different config (tokenizer.model.num_codes: 32 -> 64)" in lines[0]
    assert sorted(os.listdir(workdir)) == before


def test_missing_config_file_is_one_line(tmp_path):
    result = run_cli("main", "--config=configs/nope.py", f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "configs/nope.py" in lines[0], result.stderr[-2000:]


def test_no_config_names_the_available_ones_and_help_lists_them(tmp_path):
    result = run_cli("main", f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config is required"), result.stderr
    shipped = sorted(f"configs/{name}" for name in os.listdir("configs") if name.endswith(".py"))
    assert lines[0].endswith("available: " + ", ".join(shipped))
    assert not os.path.exists(tmp_path / "run")
    help_text = " ".join(run_cli("main", "--help").stdout.split())  # absl wraps the lines
    for flag in ("--config", "--workdir", "--coordinator_address", "--num_processes"):
        assert flag in help_text
    for config in shipped:
        assert config in help_text
