"""configs/coco256_t2i.py:smoke through `main` and `sample` on a checkout with nothing prepared:
TFDS's mock COCO captions, a frozen random-weight VAE and T5 encoder (`random:vae`, `random:t5`),
a cross-attention DiT over stored latents; it trains, evaluates (FID and IS included) and samples
prompts tokenized by the T5 folder's own tokenizer. (Changing a pretrained part on resume is
refused by the workdir config check, tested for every key in tests/config/test_validation.py.)
"""

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tensorflow")  # tfds's coco_captions builder decodes with it


@pytest.fixture(scope="module")
def coco(smoke_workdir):
    workdir, flags, log = smoke_workdir("configs/coco256_t2i.py:smoke")
    return Path(workdir), flags, log


def test_coco_smoke_trains_evaluates_and_samples(coco, tmp_path):
    workdir, _, log = coco
    assert "[tokenizer] from random:vae: not trained here" in log
    assert not (workdir / "tokenizer" / "checkpoints").exists()  # nothing trained there
    metrics = json.loads((workdir / "metrics.json").read_text())
    # The VAE is evaluated like our tokenizers, without codebook figures (it has none).
    assert np.isfinite(metrics["test_psnr_db"]) and "test_codebook_usage" not in metrics
    assert np.isfinite(metrics["test_fid"]) and metrics["test_inception_score"] >= 1
    config = json.loads((workdir / "config.json").read_text())
    assert config["text_encoder"] == "random:t5" and config["tokenizer_from"] == "random:vae"

    prompts = tmp_path / "prompts.txt"  # tokenized by the T5 folder's own tokenizer
    prompts.write_text("a red photo of a circle\nthe blue square\n")
    out = tmp_path / "out"
    sample = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert sample.returncode == 0, sample.stderr[-3000:]
    images = [np.asarray(Image.open(out / f"00000{i}.png")) for i in range(2)]
    assert all(img.shape == (32, 32, 3) for img in images)
