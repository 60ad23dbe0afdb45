"""The shapes world's configs end to end: main on the smoke variant (both stages, then metrics on
`test` and `novel`), then the sample CLI as a user calls it."""

import json
import os

import numpy as np
import pytest
from cli_helpers import read_jsonl, run_cli, shapes_inputs

CONFIGS = {
    # Sequence parallel: the DiT's tokens split over the 2 devices (the step equals the unsharded
    # one: tests/training/test_step.py).
    "v2t": "configs/shapes_v2t.py:smoke,sequence",
}
# text→image (with FSQ), image→text and speech→text on the shapes world run through main, are
# scored on test and novel and sampled (prompts, other-sized scenes and speech) in the joint
# model's smoke run (test_joint_cli.py), with the single-task code of each task: their own
# single-task smoke runs cost ~3 minutes of a suite that must stay within 15.


@pytest.fixture(params=sorted(CONFIGS))
def shapes_run(request, smoke_workdir):
    workdir, _, _ = smoke_workdir(CONFIGS[request.param])
    return request.param, workdir


def _metrics(workdir):
    return json.load(open(os.path.join(workdir, "metrics.json")))


def test_every_shapes_config_scores_test_and_novel(shapes_run):
    name, workdir = shapes_run
    metrics = _metrics(workdir)
    for split in ("test", "novel"):
        assert np.isfinite(metrics[f"{split}_psnr_db"]) and f"{split}_codebook_usage" in metrics
        for key in ("exact_match", "wer", "bleu", "attribute_accuracy/all"):
            assert np.isfinite(metrics[f"{split}_{key}"]), key
        assert f"{split}_digit_accuracy" not in metrics  # no digits here
        rows = read_jsonl(os.path.join(workdir, f"{split}_captions.jsonl"))
        assert rows and all(isinstance(r["text"], str) for r in rows)
        assert os.path.isfile(os.path.join(workdir, f"{split}_captions.png"))
    if name == "v2t":  # its smoke variant evaluates during training too (eval.every=6)
        rows = read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl"))
        (evaluated,) = [r for r in rows if "eval/test_loss" in r]
        assert evaluated["step"] == 6 and 0.0 <= evaluated["eval/test_exact_match"] <= 1.0
        assert np.isfinite(evaluated["eval/test_wer"])
        rows = read_jsonl(os.path.join(workdir, "tokenizer", "metrics.jsonl"))
        assert [r["step"] for r in rows if "eval/test_psnr" in r] == [6]
    if name == "v2t":
        assert "test_attribute_accuracy/direction" in metrics
        mesh = json.load(open(os.path.join(workdir, "generator", "mesh.json")))
        assert mesh == {"data": 1, "fsdp": 1, "sequence": 2, "tensor": 1}


def test_the_sample_cli_draws_and_captions_the_shapes_world(shapes_run, tmp_path, data_dir):
    name, workdir = shapes_run
    out = tmp_path / "out"
    names = shapes_inputs(name, tmp_path / "in", data_dir)
    result = run_cli(
        "sample", f"--workdir={workdir}", f"--input={tmp_path / 'in'}", f"--output={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(out / "outputs.jsonl")
    assert [r["input"] for r in rows] == names
    assert all(isinstance(r["text"], str) for r in rows)
