"""How the end-to-end tests call the CLIs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Fake CPU devices of a CLI run: data-parallel (8-device sharding: tests/training/test_step.py).
# Every CLI test uses the same count, so the runs share compiled programs through the suite's
# compilation cache.
DEVICES = 2

# Scalars of a logged step that measure time, not training: they differ between equal runs.
TIMING_KEYS = {"steps_per_sec", "examples_per_sec", "tflops_per_device", "mfu"}


def subprocess_env(devices: int = DEVICES) -> dict:
    """The environment of a CLI subprocess: the suite's XLA flags (tests/conftest.py) with
    `devices` fake CPU devices."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    return dict(
        os.environ, XLA_FLAGS=f"{flags.strip()} --xla_force_host_platform_device_count={devices}"
    )


def run_cli(module, *args, timeout=600):
    env = subprocess_env()
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


def check_quantizer_run(workdir: str, quantizer: str) -> None:
    """A finished smoke run of a quantizer variant: its metrics, logs and sample grid."""
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["tokenizer"]["model"]["quantizer"] == quantizer
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert 0 < metrics["test_codebook_usage"] <= 1 and np.isfinite(metrics["test_psnr_db"])
    assert np.isfinite(metrics["test_classifier_fd"])
    rows = read_jsonl(os.path.join(workdir, "tokenizer", "metrics.jsonl"))
    assert all(np.isfinite(r["loss"]) and "perplexity" in r for r in rows if "loss" in r)
    if quantizer == "lfq":  # its own terms reach the logs
        assert any("entropy_loss" in r for r in rows)
    # main's evaluation sampled the generator: 20 images a digit were judged, and a grid drawn.
    assert 0 <= metrics["sample_digit_accuracy"] <= 1
    grid = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
    assert grid.ndim >= 2 and grid.std() > 0


def shapes_inputs(name: str, folder, data_dir: str) -> list[str]:
    """Two shapes-world inputs of another size than training (another sample rate for speech):
    name i2t (.png), s2t (.wav) or v2t (.gif and .npy)."""
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
    clip = data.load_arrays("moving_shapes_smoke", "test", data_dir)["video"][0]  # as a 48×48 .gif
    frames = [Image.fromarray(np.kron(f, np.ones((3, 3, 1), np.uint8))[:48, :48]) for f in clip]
    frames[0].save(folder / "a.gif", save_all=True, append_images=frames[1:])
    np.save(folder / "b.npy", clip)
    return ["a.gif", "b.npy"]
