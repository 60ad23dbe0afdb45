"""FID and Inception Score across devices and processes (evaluation/distribution_stats.py): the
streaming moments and split sums against numpy and image_metrics, the FID against pytorch-fid's
scipy formula, 2 processes x 4 CPU devices against 1 process x 4, and bad reference files.

Run as a module (`python -m tests.evaluation.test_fid_distributed ID PORT REFERENCE OUT`), this
file is one process of the 2-process evaluation.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from crossmodal_jax.errors import UserError
from crossmodal_jax.evaluation import distribution_stats as ds
from crossmodal_jax.evaluation import image_metrics
from crossmodal_jax.training import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The stand-in evaluation: N samples (not a multiple of the batch, nor of the splits), images
# [4, 4, 3] of a per-sample key and class, and a fixed random projection as the feature network.
N, BATCH, CLASSES, SPLITS = 37, 8, 5, 3
IMAGE, POOL, LOGITS = (4, 4, 3), 6, 10
_PROJECTION = np.random.default_rng(0).normal(size=(48, POOL + LOGITS)).astype(np.float32)


def _conditions(indices: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": (indices % CLASSES).astype(np.int32)}


@jax.jit
def _generate(batch):
    """Sample i: noise of fold_in(key, i), shifted by its class: independent of the batch."""
    key = jax.random.key(7)
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), IMAGE)
    noise = jax.vmap(draw)(batch["index"])
    return jnp.tanh(noise + batch["label"][:, None, None, None] / CLASSES)


@jax.jit
def _generate_per_batch(batch):
    """One key a global batch, as a run's sampler draws it: the same set whatever the processes."""
    key = jax.random.fold_in(jax.random.key(8), batch["index"][0])
    noise = jax.random.normal(key, (batch["index"].shape[0], *IMAGE))
    return jnp.tanh(noise - batch["label"][:, None, None, None] / CLASSES)


@jax.jit
def _features(images):
    out = images.reshape(images.shape[0], -1) @ jnp.asarray(_PROJECTION)
    return jax.nn.relu(out[:, :POOL]) + 0.5, 2.0 * out[:, POOL:]


def _evaluate(mesh, reference_path: str) -> dict:
    """What the 1- and 2-process runs report: metrics, merged moments, this process's indices."""
    reference = ds.load_reference(reference_path, POOL)
    out = {"indices": np.concatenate(list(ds.deal(N, BATCH, mesh))).tolist()}
    for name, generate in (("per_sample", _generate), ("per_batch", _generate_per_batch)):
        metrics, stats = ds.evaluate_generated(
            generate,
            _features,
            N,
            conditions=_conditions,
            batch_size=BATCH,
            mesh=mesh,
            reference=reference,
            splits=SPLITS,
        )
        mean, cov = stats.moments.mean_and_covariance()
        out[name] = {**metrics, "mean": mean.tolist(), "cov": cov.tolist()}
    return out


def _pytorch_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (src/pytorch_fid/fid_score.py), scipy's sqrtm."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _moments_of_chunks(x: np.ndarray, cuts: list[int]) -> ds.Moments:
    """One accumulator a chunk (each fed in batches of 3), all merged."""
    parts = []
    for chunk in np.split(x, cuts):
        m = ds.Moments.empty(x.shape[1])
        for start in range(0, max(len(chunk), 1), 3):
            m.add(chunk[start : start + 3])
        parts.append(m)
    return functools.reduce(ds.Moments.merge, parts[::-1])  # the last chunk's shift


def test_merged_moments_over_uneven_chunks_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(103, 7)) * rng.uniform(0.1, 3.0, 7) + rng.normal(size=7)
    cuts = [1, 1, 5, 40, 41, 90]  # a one-row chunk and an empty one
    mean, cov = _moments_of_chunks(x, cuts).mean_and_covariance()
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-14)


def test_moments_keep_their_precision_far_from_the_origin():
    """Features of mean 1e6 and spread 1: the shifted sums keep the covariance to 1e-9, where
    uncentred float64 sums (Σxxᵀ − nμμᵀ) lose it to cancellation."""
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(size=(500, 4)) * [1.0, 0.5, 2.0, 0.1]
    want = np.cov(x, rowvar=False)  # two-pass: centred first
    _, cov = _moments_of_chunks(x, [123, 250, 251]).mean_and_covariance()
    np.testing.assert_allclose(cov, want, rtol=1e-9, atol=1e-9)
    raw = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert np.max(np.abs(raw - want)) > 1e-6  # what the shift is for


def test_fid_of_two_feature_sets_equals_pytorch_fids_scipy_formula():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.3 + 1.0
    b = rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.25 + 1.2
    stats = ds.Statistics(_moments_of_chunks(a, [7, 100]), ds.ScoreSums.empty(300, 1, 3))
    stats.scores.add(rng.normal(size=(300, 3)), np.arange(300))
    reference = (b.mean(axis=0), np.cov(b, rowvar=False))
    want = _pytorch_fid(a.mean(axis=0), np.cov(a, rowvar=False), *reference)
    got = ds.metrics_of(stats, reference)["fid"]
    assert got == pytest.approx(want, rel=1e-6)
    assert want > 1.0  # a distance worth comparing


@pytest.mark.parametrize("splits", [1, 3])
def test_split_score_sums_equal_image_metrics_inception_score(splits):
    rng = np.random.default_rng(4)
    n, k = 50, 12  # 50 = 17 + 17 + 16: uneven splits
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 4.0, size=(n, 1))
    logits[::7, 3] += 30.0  # some confident rows (p log p of ~0 probabilities)
    order = rng.permutation(n)  # rows arrive in any order, on any process
    halves = [ds.ScoreSums.empty(n, splits, k) for _ in range(2)]
    for h, rows in zip(halves, np.array_split(order, [11]), strict=True):
        for chunk in np.array_split(rows, 4):
            h.add(logits[chunk], chunk)
    got = halves[0].merge(halves[1]).score()
    want = image_metrics.inception_score(logits, splits=splits)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert want[0] > 1.5


def _one_line_error(path, match: str, dim=None) -> str:
    with pytest.raises(UserError) as e:
        ds.load_reference(str(path), dim)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and re.search(match, message), message
    return message


def test_a_bad_reference_npz_is_refused_in_one_line(tmp_path):
    _one_line_error(tmp_path / "absent.npz", "no such reference statistics file")
    images_only = tmp_path / "VIRTUAL_batch.npz"
    np.savez(images_only, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu_s=np.zeros(3))
    _one_line_error(images_only, "need the keys mu and sigma; it has arr_0, mu_s")
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("mu, sigma")
    _one_line_error(not_npz, "not a readable .npz")
    good = tmp_path / "ref.npz"
    np.savez(good, mu=np.zeros(4), sigma=np.eye(4), arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    mu, sigma = ds.load_reference(str(good), 4)
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    _one_line_error(good, "statistics of 4 features; the feature network gives 2048", 2048)
    np.savez(good, mu=np.zeros(4), sigma=np.eye(3))
    _one_line_error(good, r"mu \(4,\) and sigma \(3, 3\)")


def test_written_reference_reads_back(tmp_path):
    rng = np.random.default_rng(5)
    stats = ds.Statistics(_moments_of_chunks(rng.normal(size=(20, 3)), [9]), None)
    path = str(tmp_path / "sub" / "ref.npz")
    mu, sigma = ds.write_reference(path, stats)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["mu", "sigma"]
    np.testing.assert_array_equal(ds.load_reference(path)[1], sigma)
    assert ds.metrics_of(stats, (mu, sigma)) == {"fid": pytest.approx(0.0, abs=1e-9)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env() -> dict:
    """As launch/local_multiprocess.sh: 4 CPU devices a process, not the suite's forced count."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = " ".join(flags.split())
    return env


def test_two_processes_give_the_figures_of_one(tmp_path):
    """2 processes x 4 CPU devices evaluate the same N samples as 1 process x 4 devices: the
    same merged mean and covariance, FID and Inception Score (float tolerance: the devices'
    shards differ, so float32 features may round differently), for a generator keyed per sample
    and one keyed per global batch; and both equal the whole set evaluated in one piece."""
    rng = np.random.default_rng(6)
    reference = str(tmp_path / "reference.npz")
    a = rng.normal(size=(40, POOL))
    np.savez(reference, mu=a.mean(0) + 0.3, sigma=np.cov(a, rowvar=False))
    port, outs = _free_port(), [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.evaluation.test_fid_distributed"]
            + [str(i), str(port), reference, str(outs[i])],
            cwd=ROOT,
            env=_worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:  # meanwhile, here: 1 process, 4 of the suite's 8 devices
        mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:4])
        one = _evaluate(mesh, reference)
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    two = [json.loads(o.read_text()) for o in outs]
    # The dealing: each sample once, on one process; process 0 the first rows of each batch.
    dealt = [i for t in two for i in t["indices"] if i < N]
    assert sorted(dealt) == list(range(N)) and one["indices"][:N] == list(range(N))
    assert two[0]["indices"][:4] == [0, 1, 2, 3] and two[1]["indices"][:4] == [4, 5, 6, 7]
    for name in ("per_sample", "per_batch"):
        for t in two:
            for key in ("mean", "cov", "fid", "inception_score", "inception_score_std"):
                np.testing.assert_allclose(
                    t[name][key], one[name][key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}"
                )
        assert one[name]["inception_score"] > 1.2 and one[name]["fid"] > 0.1
    # The whole set in one piece, from numpy and image_metrics.
    index = np.arange(N)
    pool, logits = _features(_generate({"index": index, **_conditions(index)}))
    pool, logits = np.asarray(pool, np.float64), np.asarray(logits, np.float64)
    got = one["per_sample"]
    np.testing.assert_allclose(got["mean"], pool.mean(0), rtol=1e-5)
    np.testing.assert_allclose(got["cov"], np.cov(pool, rowvar=False), rtol=1e-5, atol=1e-6)
    want_is = image_metrics.inception_score(logits, splits=SPLITS)
    np.testing.assert_allclose([got["inception_score"], got["inception_score_std"]], want_is, 1e-5)
    mu, sigma = ds.load_reference(reference)
    want_fid = _pytorch_fid(pool.mean(0), np.cov(pool, rowvar=False), mu, sigma)
    assert got["fid"] == pytest.approx(want_fid, rel=1e-5)


def test_sharded_inception_features_equal_the_unsharded_network():
    """fid_eval.inception_features (variables replicated, one image a device) gives
    models/inception.py's outputs; the shapes of tests/models/test_inception.py (2 images 32x32
    at 107x107), so the suite compiles the unsharded program once for both."""
    from crossmodal_jax.evaluation import fid_eval
    from crossmodal_jax.models import inception, inception_weights
    from tests.models.test_inception import RESIZE, _images, _random_state_dict

    variables = inception_weights.convert_state_dict(_random_state_dict())
    images = _images(2, 32)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:2])
    pool, logits = fid_eval.inception_features(variables, mesh, resize_to=RESIZE)(images)
    assert len({s.index[0].indices(2) for s in pool.addressable_shards}) == 2  # 1 a device
    want = inception.inception_outputs(variables, images, batch_size=2, resize_to=RESIZE)
    for got, expected in zip((pool, logits), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(want[0], axis=0).max() > 0  # the two images give distinct features


def _tiny_dit_and_vae(folder) -> tuple[str, str]:
    """A random 1-block DiT-S/2 (1000 classes, learned sigma) and a random KL VAE (2x: images
    8x8), saved as diffusers folders (no torch needed to read them; the facebookresearch .pt
    reads through the same loader, tests/pretrained/test_class_sampler.py)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_eps=1e-6,
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    with torch.no_grad():
        for model, std in ((dit, 0.05), (vae, 0.1)):
            for p in model.parameters():
                p.normal_(0.0, std)
            model.save_pretrained(folder / type(model).__name__, safe_serialization=True)
    return str(folder / "DiTTransformer2DModel"), str(folder / "AutoencoderKL")


def _evaluate_cli(*args: str, wait: bool = True):
    from tests.cli.cli_helpers import subprocess_env

    command = [sys.executable, "-m", "crossmodal_jax.evaluate", *args]
    kwargs = dict(cwd=ROOT, env=subprocess_env(2), text=True)
    if wait:
        return subprocess.run(command, capture_output=True, timeout=300, **kwargs)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def test_evaluate_cli_scores_a_converted_dit(tmp_path):
    """`python -m crossmodal_jax.evaluate --dit=... --features=random_projection` on 2 devices:
    its metrics.json equals ClassSampler's images of classes i % 1000 (same seed and sampler),
    scored here in one piece. The random projection stands in for InceptionV3 (its load,
    compilation at 299x299 and 2048-d FID would cost the suite ~30 s), so this checks the CLI's
    plumbing; the Inception path is `fid_eval.inception_features`, the same sharded wrapper."""
    from crossmodal_jax.evaluation import fid_eval
    from crossmodal_jax.pretrained import class_sampler as cs

    dit_path, vae_path = _tiny_dit_and_vae(tmp_path)
    reference, out = tmp_path / "ref.npz", tmp_path / "out" / "metrics.json"
    a = np.random.default_rng(7).normal(size=(80, 64))
    np.savez(reference, mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    settings = ["--sampler=ddim", "--steps=2", "--guidance=1.5", "--seed=3"]
    common = [f"--dit={dit_path}", f"--vae={vae_path}", "--features=random_projection"]
    proc = _evaluate_cli(
        *common,
        *settings,
        "--num_samples=6",
        "--batch_size=4",
        f"--reference={reference}",
        f"--output={out}",
        wait=False,
    )
    try:  # meanwhile, here: the same images from ClassSampler, scored in one piece
        sample = cs.ClassSampler(*cs.load_parts(dit_path, vae_path), steps=2, guidance=1.5)
        images = sample.sample_all([i % 1000 for i in range(6)], jax.random.key(3), 6)
        mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
        pool, logits = fid_eval.projection_features(mesh)(jnp.asarray(images) / 127.5 - 1.0)
        log = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, log[-3000:]
    pool, logits = np.asarray(pool, np.float64), np.asarray(logits, np.float64)
    score, std = image_metrics.inception_score(logits, splits=1)
    mu, sigma = ds.load_reference(str(reference))
    fid = _pytorch_fid(pool.mean(0), np.cov(pool, rowvar=False), mu, sigma)
    got = json.loads(out.read_text())
    assert got == {
        "fid": pytest.approx(fid, rel=1e-4),
        "inception_score": pytest.approx(score, rel=1e-6),
        "inception_score_std": 0.0,
        "num_samples": 6,
    }
    assert np.ptp(images) > 0 and score > 1.0
    # Bad flags and a bad reference: one line, exit code 2, nothing written.
    images_only = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(images_only, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    bad = [
        ([f"--dit={dit_path}"], "--dit needs --vae, --reference, --output, --inception_weights"),
        (["--workdir=x", f"--dit={dit_path}"], "name one of --workdir=DIR"),
        ([*common, "--features=clip", f"--reference={reference}"], "--features=clip: choose"),
        (
            [*common, f"--reference={images_only}", f"--output={tmp_path / 'no.json'}"],
            f"error: {images_only}: reference statistics need the keys mu and sigma; it has arr_0",
        ),
    ]
    for args, message in bad:
        result = _evaluate_cli(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "no.json").exists()


if __name__ == "__main__":  # one process of test_two_processes_give_the_figures_of_one
    process_id, port, reference_path, out_path = sys.argv[1:]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    result = _evaluate(sharding.make_mesh({"data": -1}), reference_path)
    with open(out_path, "w") as f:
        json.dump(result, f)
