"""configs/imagenet256.py:smoke through `main` and `sample` on a checkout with nothing prepared:
TFDS's mock ImageNet (`data.tfds_mock_examples`), a tiny random-weight VAE (`random:vae`, written
with torch once per machine), class labels, latents encoded once into shards (generator.latents),
FID and IS through the full-size path. A run killed mid-encode and rerun writes the same bytes as
the smoke run's uninterrupted one; 2 processes write the same shards as 1
(tests/cli/latents_worker.py, the same devices a process); a changed dataset is refused in one
line; the stored statistics and flips are what they say. (COCO: test_coco256_cli.py; LibriSpeech:
test_librispeech_cli.py.)
"""

import filecmp
import json
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
from crossmodal_jax.errors import UserError

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tensorflow_datasets")

WORKER = Path(__file__).with_name("latents_worker.py")


@pytest.fixture(scope="module")
def imagenet(smoke_workdir):
    workdir, flags, log = smoke_workdir("configs/imagenet256.py:smoke")
    return Path(workdir), flags, log


def test_imagenet_smoke_trains_on_stored_latents_evaluates_and_samples_classes(imagenet, tmp_path):
    workdir, _, log = imagenet
    assert "[tokenizer] from random:vae: not trained here" in log
    assert "[latents] 48 examples in 3 shards" in log
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert 0 <= metrics["test_sample_class_accuracy"] <= 1  # class labels judge the samples
    # FID and IS through the full-size path (random Inception weights: plumbing, not a score)
    assert np.isfinite(metrics["test_fid"]) and metrics["test_inception_score"] >= 1
    assert np.isfinite(metrics["test_classifier_fd"]) and np.isfinite(metrics["test_psnr_db"])

    # The sample CLI restores the finished generator: its latent statistics come from the
    # checkpoint, and the shards are neither read nor written (stored_latents' restored path).
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("207\nn01443537\n")  # a class by index, and by its caption
    out = tmp_path / "out"
    sample = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert "[latents]" not in sample.stdout + sample.stderr
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


def test_a_changed_dataset_is_refused(imagenet):
    """The smoke run's manifest against one of another dataset (tfds's mock data of 40 examples,
    the fingerprint a resume compares): one line naming the difference, before any encode."""
    folder = imagenet[0] / "latents" / "train"
    manifest = store.read_json(folder / "manifest.json")
    assert store.check_manifest(folder, manifest, "generator.latents.dir")  # the same: reused
    changed = dict(manifest, data_fingerprint={"records": 40, "sha256": "0" * 16})
    with pytest.raises(UserError) as info:
        store.check_manifest(folder, changed, "generator.latents.dir")
    line = str(info.value)
    assert len(line.splitlines()) == 1 and "data_fingerprint" in line and str(folder) in line


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
