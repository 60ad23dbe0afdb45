"""configs/shapes_joint.py end to end: one generator for the four shapes tasks trained by main
(smoke variant), resumed exactly from a checkpoint, evaluated per task, and sampled per task."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_helpers import DEVICES, TIMING_KEYS, read_jsonl, run_cli, shapes_inputs
from PIL import Image

from crossmodal_jax import joint_run
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.errors import UserError
from crossmodal_jax.pipeline import Pipeline

CONFIG = "configs/shapes_joint.py:smoke"
TASKS = ("image2text", "speech2text", "text2image", "video2text")
PROMPTS = ["a red triangle above a cyan cross", "a small blue circle at top left", "a green square"]


def test_one_generator_learns_every_task_and_each_is_evaluated(smoke_workdir):
    workdir, _, log = smoke_workdir(CONFIG)
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    for task in TASKS:
        for split in ("test", "novel"):
            key = "sample_attribute_accuracy/all" if task == "text2image" else "exact_match"
            assert 0 <= metrics[f"{task}/{split}_{key}"] <= 1, (task, split)
            assert np.isfinite(metrics[f"{task}/{split}_psnr_db"])  # the tokenizer it uses
        assert os.path.isfile(os.path.join(workdir, task, "report.html"))
        # Each task's tokenizer trains in its own folder, as its single-task config trains it;
        # image→text uses text→image's (tokenizer_of), FSQ in the smoke.
        trained = os.path.isdir(os.path.join(workdir, task, "tokenizer", "checkpoints"))
        assert trained == (task != "image2text"), task
    assert metrics["text2image/test_psnr_db"] == metrics["image2text/test_psnr_db"]
    t2i_config = json.load(open(os.path.join(workdir, "text2image", "config.json")))
    assert t2i_config["tokenizer"]["model"]["quantizer"] == "fsq"  # FSQ on the shapes world
    for split in ("test", "novel"):
        for attr in ("all", "count", "color", "shape", "size", "position", "relation"):
            assert 0 <= metrics[f"text2image/{split}_sample_attribute_accuracy/{attr}"] <= 1, attr
        assert 0 <= metrics[f"text2image/{split}_real_attribute_accuracy/all"] <= 1
        assert metrics[f"text2image/{split}_classifier_fd"] >= 0
    for task, n in (("image2text", 32), ("speech2text", 16), ("video2text", 16)):  # their smokes'
        for split in ("test", "novel"):
            for key in ("exact_match", "wer", "bleu", "attribute_accuracy/all"):
                assert np.isfinite(metrics[f"{task}/{split}_{key}"]), (task, split, key)
            rows = read_jsonl(os.path.join(workdir, task, f"{split}_captions.jsonl"))
            assert len(rows) == n and all(isinstance(r["text"], str) for r in rows)
            assert os.path.isfile(os.path.join(workdir, task, f"{split}_captions.png"))
    assert os.path.isfile(os.path.join(workdir, "text2image", "samples.png"))
    # One generator: one stage folder, one loss per step and each task's own loss beside it.
    rows = [
        r for r in read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl")) if "loss" in r
    ]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert all(np.isfinite(row[f"{task}/loss"]) for task in TASKS)
        assert "image2text/masked_accuracy" in row
    assert log.count("[generator] initialised") == 1
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["generator"]["mixture"] == {t: 4 for t in TASKS}


def final_checkpoint(workdir, step=6):
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(os.path.join(workdir, "generator", "checkpoints", str(step), "state"))
    return jax.tree.map(np.asarray, state)


def data_state(workdir, step=6):
    folder = os.path.join(workdir, "generator", "checkpoints", str(step), "data")
    names = [n for n in sorted(os.listdir(folder)) if n.startswith("process_")]  # grain's JSON
    assert names
    return {n: open(os.path.join(folder, n), "rb").read() for n in names}


def test_a_rerun_from_a_checkpoint_ends_bitwise_equal(smoke_workdir, tmp_path):
    """What a run killed after its step-3 checkpoint leaves: the rerun resumes every task's data
    position and ends with the same weights, optimizer, EMA and losses. (A kill mid-save, and
    the loop's resume after SIGKILL, are tested on a single-task run: tests/cli/test_resume.py.)"""
    workdir, flags, _ = smoke_workdir(CONFIG)
    cut = str(tmp_path / "cut")
    shutil.copytree(workdir, cut)
    shutil.rmtree(os.path.join(cut, "generator", "checkpoints", "6"))
    with open(os.path.join(cut, "generator", "metrics.jsonl")) as f:
        kept = [line for line in f if json.loads(line)["step"] <= 3]
    with open(os.path.join(cut, "generator", "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    flags = [f for f in flags if not f.startswith("--workdir=")] + [f"--workdir={cut}"]
    # Without the final evaluation (an eval.* key may change on resume): the weights are compared.
    result = run_cli("main", *flags, "--config.eval.at_end=False")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[generator] resuming from step 3" in result.stdout
    assert result.stdout.count("already trained") == 3  # the tokenizers are restored
    ref, again = final_checkpoint(workdir), final_checkpoint(cut)
    assert jax.tree.structure(ref) == jax.tree.structure(again)
    jax.tree.map(np.testing.assert_array_equal, ref, again)
    assert data_state(workdir) == data_state(cut)  # every task's position in the mixture

    def by_step(path):
        return {
            r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in read_jsonl(os.path.join(path, "generator", "metrics.jsonl"))
        }

    assert by_step(cut) == by_step(workdir)  # every task's loss at every logged step


def test_the_sample_cli_runs_the_task_its_input_fits_as_the_pipeline_does(
    smoke_workdir, tmp_path, data_dir
):
    workdir, _, _ = smoke_workdir(CONFIG)
    # The sample CLI's devices (cli_helpers.DEVICES): the same sharded programs.
    pipe = Pipeline.from_workdir(workdir, devices=jax.devices()[:DEVICES])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "images"
    result = run_cli(
        "sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}", "--seed=3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = pipe.generate(PROMPTS, seed=3)  # the CLI is a user of the pipeline: same images
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    for i, image in enumerate(images):
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{i:06d}.png")), image)
    prompts.write_text("a red triangle\na purple circle at top\n")  # not a shapes word
    bad = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}1")
    assert bad.returncode == 2 and "'purple'" in bad.stderr and not os.path.exists(f"{out}1")
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    # Folders of 64×64 scenes (image→text) and 22.05 kHz speech (speech→text), not the training
    # formats: each is the one task that reads such files.
    for name in ("i2t", "s2t"):
        names = shapes_inputs(name, tmp_path / name, data_dir)
        captions = tmp_path / f"{name}_captions"
        result = run_cli(
            "sample", f"--workdir={workdir}", f"--input={tmp_path / name}", f"--output={captions}"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_jsonl(captions / "outputs.jsonl")
        assert [r["input"] for r in rows] == names and all(isinstance(r["text"], str) for r in rows)
        paths = [str(tmp_path / name / n) for n in names]
        assert pipe.caption(paths) == [r["text"] for r in rows]
    wrong = run_cli(
        "sample",
        f"--workdir={workdir}",
        f"--input={tmp_path / 'i2t'}",
        f"--output={out}2",
        "--task=speech2txt",
    )
    assert wrong.returncode == 2
    assert "--task=speech2txt: this joint workdir has tasks image2text, " in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("sample", f"--workdir={workdir}", f"--input={empty}", f"--output={out}3")
    assert result.returncode == 2 and "fits none of its tasks" in result.stderr
    assert not os.path.exists(f"{out}3")


@pytest.mark.parametrize(
    "flag, messages",
    [  # a mixture that leaves out a task; a tokenizer borrowed from a task that borrows (the
        # smoke variant has image2text use text2image's tokenizer)
        (
            "--config.generator.mixture.text2image=5",
            ("generator.mixture: mixture weights", "'image2text'"),
        ),
        (
            "--config.tokenizer_of.text2image=video2text",
            ("tokenizer_of.image2text='text2image': name a task that trains its own",),
        ),
    ],
)
def test_a_bad_joint_config_is_one_line_and_writes_nothing(tmp_path, flag, messages):
    workdir = tmp_path / "run"
    result = run_cli("main", f"--config={CONFIG}", f"--workdir={workdir}", flag)
    assert result.returncode == 2
    assert all(message in result.stderr for message in messages)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not workdir.exists()


def test_a_task_uses_the_finished_tokenizer_of_the_workdir_it_names(smoke_workdir, tmp_path):
    workdir, _, _ = smoke_workdir(CONFIG)
    config = load_resolved_config(workdir)
    config.tokenizer_from.text2image = os.path.join(workdir, "text2image")
    assert list(joint_run.task_config(config, "text2image").stages) == ["generator"]  # none here
    new = joint_run.local_task_experiments(config, str(tmp_path / "new"))
    own = joint_run.local_task_experiments(load_resolved_config(workdir), workdir)
    trained = own["image2text"].results["tokenizer"]  # text→image's, restored from its folder
    for task in ("text2image", "image2text"):  # image→text reads text→image's (tokenizer_of)
        borrowed = new[task].results["tokenizer"]
        assert int(borrowed.step) == int(trained.step) == 6
        jax.tree.map(np.testing.assert_array_equal, borrowed.params, trained.params)
    config.tokenizer_from.text2image = str(tmp_path / "nowhere")
    os.makedirs(config.tokenizer_from.text2image)
    shutil.copy(
        os.path.join(workdir, "text2image", "config.json"), config.tokenizer_from.text2image
    )
    with pytest.raises(UserError, match=r"^no tokenizer checkpoint in .*nowhere/tokenizer$"):
        joint_run.local_task_experiments(config, str(tmp_path / "new"))
