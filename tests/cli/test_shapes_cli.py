"""The shapes world's four configs end to end: main on the smoke variant (both stages, then
metrics on `test` and `novel`), then the sample CLI as a user calls it."""

import json
import os

import numpy as np
import pytest
from cli_helpers import read_jsonl, run_cli
from PIL import Image

CONFIGS = {
    # FSQ: the quantizer family runs on the shapes world too (i2t's tokenizer is the EMA VQ).
    "t2i": "configs/shapes_t2i.py:smoke,fsq",
    "i2t": "configs/shapes_i2t.py:smoke",
    "s2t": "configs/shapes_s2t.py:smoke",
    # Sequence parallel: the DiT's tokens split over the 2 devices (the step equals the unsharded
    # one: tests/training/test_step.py).
    "v2t": "configs/shapes_v2t.py:smoke,sequence",
}


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
        if name == "t2i":
            for attr in ("all", "count", "color", "shape", "size", "position", "relation"):
                assert 0.0 <= metrics[f"{split}_sample_attribute_accuracy/{attr}"] <= 1.0, attr
            assert 0.0 <= metrics[f"{split}_real_attribute_accuracy/all"] <= 1.0
            assert metrics[f"{split}_classifier_fd"] >= 0.0
        else:
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


def _inputs(name: str, folder, data_dir: str) -> list[str]:
    """Two inputs of another size than training (another sample rate for speech)."""
    from crossmodal_jax import data

    folder.mkdir()
    if name == "i2t":  # 64×64 instead of 32×32
        images = data.load_arrays("shapes", "novel", data_dir)["image"][:2]
        for i, img in enumerate(images):
            Image.fromarray(np.kron(img, np.ones((2, 2, 1), np.uint8))).save(folder / f"{i}.png")
        return ["0.png", "1.png"]
    if name == "s2t":  # 22.05 kHz
        from scipy.io import wavfile
        from scipy.signal import resample

        clips = data.load_arrays("spoken_shapes_smoke", "test", data_dir)["audio"][:2]
        for i, clip in enumerate(clips):
            wave = resample(clip.astype(np.float32), int(len(clip) * 22050 / 16000))
            wavfile.write(folder / f"{i}.wav", 22050, wave.astype(np.int16))
        return ["0.wav", "1.wav"]
    clip = data.load_arrays("moving_shapes", "test", data_dir)["video"][0]  # as a 48×48 .gif
    frames = [Image.fromarray(np.kron(f, np.ones((3, 3, 1), np.uint8))[:48, :48]) for f in clip]
    frames[0].save(folder / "a.gif", save_all=True, append_images=frames[1:])
    np.save(folder / "b.npy", clip)
    return ["a.gif", "b.npy"]


def test_the_sample_cli_draws_and_captions_the_shapes_world(shapes_run, tmp_path, data_dir):
    name, workdir = shapes_run
    out = tmp_path / "out"
    if name == "t2i":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red triangle above a cyan cross\na small blue circle at top left\n")
        result = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]
        assert np.asarray(Image.open(out / "000001.png")).shape == (32, 32, 3)
        prompts.write_text("a red triangle\na purple circle at top\n")  # not a shapes word
        bad = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}2")
        assert bad.returncode != 0 and "'purple'" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        return
    names = _inputs(name, tmp_path / "in", data_dir)
    result = run_cli(
        "sample", f"--workdir={workdir}", f"--input={tmp_path / 'in'}", f"--output={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(out / "outputs.jsonl")
    assert [r["input"] for r in rows] == names
    assert all(isinstance(r["text"], str) for r in rows)
