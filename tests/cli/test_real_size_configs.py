"""The real-size image configs' smoke variants through `main` and `sample`, on a checkout with
nothing prepared: TFDS's mock data (`data.tfds_mock_examples`) and tiny random-weight pretrained
parts (`random:vae`, `random:t5`, written with torch once per machine).

- configs/imagenet256.py:smoke: class-conditional, latents encoded once into shards
  (generator.latents). A run killed mid-encode and rerun writes the same bytes as the smoke run's
  uninterrupted one; 2 processes write the same shards as 1 (tests/cli/latents_worker.py, the same
  devices a process); a changed dataset is refused in one line; the stored statistics and flips
  are what they say.
- configs/coco256_t2i.py:smoke: a frozen VAE and T5 encoder; trains, resumes, evaluates and
  samples, and changing a pretrained part on resume is refused.
"""

import filecmp
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import DEVICES, ROOT, run_cli, subprocess_env
from flax import serialization
from PIL import Image

from crossmodal_jax.data import latent_shards as store

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tensorflow_datasets")

WORKER = Path(__file__).with_name("latents_worker.py")


@pytest.fixture(scope="module")
def imagenet(smoke_workdir):
    workdir, flags, log = smoke_workdir("configs/imagenet256.py:smoke")
    return Path(workdir), flags, log


def test_imagenet_smoke_trains_on_stored_latents_resumes_and_samples_classes(imagenet, tmp_path):
    workdir, flags, log = imagenet
    assert "[tokenizer] from random:vae: not trained here" in log
    assert "[latents] 48 examples in 3 shards" in log
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert 0 <= metrics["test_sample_class_accuracy"] <= 1  # class labels judge the samples
    assert np.isfinite(metrics["test_classifier_fd"]) and np.isfinite(metrics["test_psnr_db"])

    rerun = run_cli("main", *flags)  # resumes: nothing left to train, no shard written again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already trained" in rerun.stdout + rerun.stderr
    assert "[latents] shard" not in rerun.stdout + rerun.stderr

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("207\nn01443537\n")  # a class by index, and by its caption
    out = tmp_path / "out"
    sample = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert [np.asarray(Image.open(out / f"00000{i}.png")).shape for i in range(2)] == [
        (32, 32, 3)
    ] * 2
    prompts.write_text("a golden retriever\n")
    bad = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}2")
    assert bad.returncode != 0 and "a golden retriever" in bad.stderr.strip().splitlines()[-1]


# --- the latent shards -----------------------------------------------------------------------


def _start(folder, *args, **env):
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(folder), *args],
        cwd=ROOT,
        env=dict(subprocess_env(DEVICES), JAX_PLATFORMS="cpu", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, ok=True):
    out, err = proc.communicate(timeout=300)
    if ok:
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return proc.returncode, out, err


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _same_shards(a: Path, b: Path) -> None:
    names = [n for n in _files(a) if n.endswith((".array_record", ".json"))]
    assert _files(a) == _files(b) and len(names) == 3 * 2 + 2  # shards, sums, manifest, stats
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, mismatch + errors


def test_a_killed_encode_reruns_to_the_same_shards(imagenet, tmp_path):
    reference = imagenet[0] / "latents" / "train"
    folder = tmp_path / "killed"
    code, _, _ = _finish(_start(folder, "--die_after=1"), ok=False)
    assert code == 3
    left = _files(folder / "train")
    assert sum(n.endswith(".array_record") for n in left) == 1  # one shard, then the kill
    temporaries = [n for n in left if n.startswith(".") and "tmp" in n]
    assert temporaries  # the half-written next shard: never read as one
    _finish(_start(folder))
    for name in temporaries:
        (folder / "train" / name).unlink()
    _same_shards(reference, folder / "train")


def test_two_processes_write_the_same_shards_as_one(imagenet, tmp_path):
    reference = imagenet[0] / "latents" / "train"
    folder = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_start(folder, f"127.0.0.1:{port}", "2", str(i)) for i in range(2)]
    for proc in procs:
        _finish(proc)
    _same_shards(reference, folder / "train")


def test_a_changed_dataset_is_refused(imagenet, tmp_path):
    folder = tmp_path / "changed"
    folder.mkdir()
    os.symlink(imagenet[0] / "latents" / "train", folder / "train")
    code, _, err = _finish(_start(folder, MOCK_EXAMPLES="40"), ok=False)
    line = err.strip().splitlines()[-1]
    assert code != 0 and "generator.latents.dir" in line and "data_fingerprint" in line, err[-2000:]


def test_stored_statistics_and_flips(imagenet):
    folder = imagenet[0] / "latents" / "train"
    assert store.read_json(folder / "manifest.json")["examples"] == 48
    source = store.open_shards(folder, 3)
    records = [serialization.msgpack_restore(source[i]) for i in range(len(source))]
    z = np.stack([r[k] for r in records for k in (store.LATENT, store.LATENT_FLIP)])
    assert len(records) == 48 and z.dtype == np.float16 and z.shape[1:] == (8, 8, 4)
    flat = z.astype(np.float64).reshape(-1, 4)
    stats = store.read_json(folder / "stats.json")
    np.testing.assert_allclose(stats["mean"], flat.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats["std"], np.sqrt(np.mean((flat - flat.mean(0)) ** 2)), 1e-10)
    # The features pick the latent or its flip's, by grain's per-record rng.
    features = store.LatentFeatures("z", 1, None)
    picks = [features.random_map(source[0], np.random.default_rng(s))["z"] for s in range(16)]
    kinds = {
        k
        for p in picks
        for k in (store.LATENT, store.LATENT_FLIP)
        if np.array_equal(p, records[0][k])
    }
    assert kinds == {store.LATENT, store.LATENT_FLIP}


# --- COCO, text→image with a pretrained VAE and T5 --------------------------------------------


@pytest.fixture(scope="module")
def coco(smoke_workdir):
    workdir, flags, log = smoke_workdir("configs/coco256_t2i.py:smoke")
    return Path(workdir), flags, log


def test_coco_smoke_trains_resumes_evaluates_and_samples(coco, tmp_path):
    workdir, flags, log = coco
    assert "[tokenizer] from random:vae: not trained here" in log
    assert not (workdir / "tokenizer" / "checkpoints").exists()  # nothing trained there
    metrics = json.loads((workdir / "metrics.json").read_text())
    # The VAE is evaluated like our tokenizers, without codebook figures (it has none).
    assert np.isfinite(metrics["test_psnr_db"]) and "test_codebook_usage" not in metrics
    config = json.loads((workdir / "config.json").read_text())
    assert config["text_encoder"] == "random:t5" and config["tokenizer_from"] == "random:vae"

    rerun = run_cli("main", *flags)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already trained" in rerun.stdout + rerun.stderr

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red photo of a circle\nthe blue square\n")
    out = tmp_path / "out"
    sample = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert sample.returncode == 0, sample.stderr[-3000:]
    images = [np.asarray(Image.open(out / f"00000{i}.png")) for i in range(2)]
    assert all(img.shape == (32, 32, 3) for img in images)


def test_changing_a_pretrained_part_on_resume_is_refused(coco):
    _, flags, _ = coco
    result = run_cli("main", *flags, "--config.text_encoder=")
    assert result.returncode != 0
    assert "text_encoder" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
