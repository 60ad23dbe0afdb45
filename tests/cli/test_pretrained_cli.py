"""A text→image run with pretrained parts through `main` and `sample`: a random-weight diffusers
AutoencoderKL as the tokenizer (`tokenizer_from`) and a random-weight transformers T5 encoder as
the caption condition (`text_encoder`), both saved with `save_pretrained`. It trains, resumes,
evaluates and samples; changing a part on resume is refused."""

import json
import os

import numpy as np
import pytest
from cli_helpers import run_cli
from filelock import FileLock
from PIL import Image

from crossmodal_jax.evaluation import shapes_judge

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pretrained_run(shared_dir, data_dir):
    """(workdir, flags, main's output) of the smoke run with both pretrained parts."""
    from tests.pretrained import folders

    root = shared_dir / "pretrained_parts"
    with FileLock(str(root) + ".lock"):
        if not (root / "t5" / "config.json").exists():
            folders.tiny_vae(root / "vae")  # 32×32 RGB -> 8×8×4 latents
            folders.tiny_t5(root / "t5", shapes_judge.caption_words())
    workdir = shared_dir / "workdirs" / "shapes_t2i_pretrained"
    flags = [
        "--config=configs/shapes_t2i.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.tokenizer_from={root / 'vae'}",
        f"--config.text_encoder={root / 't5'}",
    ]
    result = run_cli("main", *flags)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, flags, result.stdout + result.stderr


def test_pretrained_parts_train_resume_evaluate_and_sample(pretrained_run, tmp_path):
    workdir, flags, log = pretrained_run
    assert "[tokenizer] from" in log and "not trained here" in log
    assert not os.path.exists(workdir / "tokenizer" / "checkpoints")  # nothing trained there
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    # The VAE is evaluated like our tokenizers, without codebook figures (it has none).
    assert np.isfinite(metrics["test_psnr_db"]) and "test_codebook_usage" not in metrics
    assert 0 <= metrics["test_sample_attribute_accuracy/all"] <= 1
    with open(workdir / "config.json") as f:
        config = json.load(f)
    assert config["text_encoder"].endswith("t5") and config["tokenizer_from"].endswith("vae")

    rerun = run_cli("main", *flags)  # resumes: nothing left to train
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already trained" in rerun.stdout + rerun.stderr

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle left of a blue square\na small blue cross at top right\n")
    out = tmp_path / "out"
    sample = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert sample.returncode == 0, sample.stderr[-3000:]
    images = [np.asarray(Image.open(out / f"00000{i}.png")) for i in range(2)]
    assert all(img.shape == (32, 32, 3) for img in images)


def test_changing_a_pretrained_part_on_resume_is_refused(pretrained_run, tmp_path):
    workdir, flags, _ = pretrained_run
    other = [f for f in flags if not f.startswith("--config.text_encoder")]
    result = run_cli("main", *other)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "text_encoder" in message, result.stderr[-2000:]
