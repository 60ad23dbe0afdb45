"""FID-50K and Inception Score of a trained run or a converted DiT, across devices and processes
(the statistics: distribution_stats.py).

- `inception_features`: pytorch-fid's InceptionV3 (models/inception.py) run data-parallel over a
  mesh, its variables replicated on every device (`projection_features`: a cheap stand-in);
- `fid_metrics`: a text→image run's `test_fid`, `test_inception_score` (and `_std`) from
  `eval.num_samples` generated images, captions of the test split dealt i mod their count,
  against `eval.reference_stats` or the test split's own real images (the run's sampler draws
  one key per global batch, so the set depends on eval.batch_size, never on the process count);
- `class_generator`: a converted class-conditional DiT (pretrained/class_sampler.py) whose
  sample i has class i % num_classes and the key fold_in(key, i), as ClassSampler draws it, so
  the set depends on neither the batch nor the process count;
- `split_statistics`: the moments of a split's real images, for a reference .npz.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from crossmodal_jax.data.pipeline import pad_batch
from crossmodal_jax.evaluation import distribution_stats as ds
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models import inception, inception_weights
from crossmodal_jax.pretrained import class_sampler
from crossmodal_jax.training import sharding

log = logging.getLogger("crossmodal_jax")

# Fold-in of the run seed for the noise of the FID samples (the test split's images use 10**9 + 1).
_FID_SALT = 10**9 + 2


def sharded_features(net: Callable, params, mesh: Mesh) -> Callable:
    """features(images) = net(params, images) -> (pool [B, D], logits [B, K]), batch-sharded over
    the mesh's data axes, `params` replicated on every device. The images are constrained to the
    data axes first: a generator's replicated output would otherwise run whole on every device."""
    params = ds.replicate(params, mesh)
    rows = sharding.batch_sharding(mesh, 2)

    @jax.jit
    def run(params, images):
        images = jax.lax.with_sharding_constraint(
            images, sharding.batch_sharding(mesh, images.ndim)
        )
        pool, logits = net(params, images)
        return (
            jax.lax.with_sharding_constraint(pool, rows),
            jax.lax.with_sharding_constraint(logits, rows),
        )

    return lambda images: run(params, images)


def inception_features(variables, mesh: Mesh, *, resize_to: int = 299) -> Callable:
    """pytorch-fid's InceptionV3: images [B, H, W, 1 or 3] in [-1, 1] -> (pool [B, 2048],
    logits [B, 1008])."""
    return sharded_features(
        functools.partial(inception.features, resize_to=resize_to), variables, mesh
    )


def projection_features(mesh: Mesh, pool_dim: int = 64, num_logits: int = 10) -> Callable:
    """A stand-in for InceptionV3 (`evaluate --features=random_projection`): images resized to
    8×8×3, then a fixed random projection to `pool_dim` features and `num_logits` logits. Its
    numbers mean nothing; it runs the whole evaluation at a fraction of Inception's cost (tests)."""
    w = np.random.default_rng(0).normal(size=(192, pool_dim + num_logits)) / np.sqrt(192)

    def net(w, images):
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        x = jax.image.resize(images, (images.shape[0], 8, 8, 3), "bilinear")
        out = x.reshape(x.shape[0], -1) @ w
        return out[:, :pool_dim], 4.0 * out[:, pool_dim:]

    return sharded_features(net, w.astype(np.float32), mesh)


def class_generator(
    sampler: class_sampler.ClassSampler, key: jax.Array, mesh: Mesh
) -> Callable[[dict[str, jax.Array]], jax.Array]:
    """generate(batch with "index", "label") -> images in [-1, 1], rounded to uint8 first as DiT's
    sample_ddp.py saves them: ClassSampler's noise, chain and decoding programs for any rows
    (its `noise`/`denoise` take host labels, so their jitted cores are called here)."""
    plan, decoding = sampler.plan, sampler.decoding
    params = ds.replicate((sampler.dit.params, sampler.vae.params), mesh)

    @jax.jit
    def run(params, batch):
        dit_params, vae_params = params
        index = batch["index"]
        x_T = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), plan.latent_shape))(
            index
        )
        chain = None
        if plan.sampler == "ddpm":  # ClassSampler.chain_keys
            root = jax.random.fold_in(key, class_sampler.CHAIN_STREAM)
            chain = jax.vmap(lambda i: jax.random.fold_in(root, i))(index)
        z = class_sampler._denoise(plan, dit_params, batch["label"], x_T, chain)
        images = class_sampler._decode(decoding, True, vae_params, z)
        return images.astype(jnp.float32) / 127.5 - 1.0

    return lambda batch: run(params, batch)


def class_conditions(num_classes: int) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    return lambda indices: {"label": (indices % num_classes).astype(np.int32)}


def _split_captions(exp: Experiment, limit: int) -> tuple[np.ndarray, np.ndarray]:
    ids, masks = [], []
    for batch in exp.batches("test", exp.config.eval.batch_size, limit=limit):
        ids.append(batch["text"])
        masks.append(batch["text_mask"])
    return np.concatenate(ids), np.concatenate(masks)


def split_statistics(
    exp: Experiment, features: Callable, split: str = "test", limit: int = 0
) -> ds.Statistics:
    """Merged statistics of a split's first `limit` (0 = all) real images. Every process reads
    the split's batches in order and sends its own rows of each through the network."""
    mesh = exp.ctx.mesh
    batch = ds.global_batch_size(exp.config.eval.batch_size, mesh)
    batches = exp.batches(split, batch, limit=limit)
    count = len(exp.source(split)[0])
    count = min(limit, count) if limit else count

    def inputs(indices: np.ndarray) -> dict[str, np.ndarray]:
        images = pad_batch(np.asarray(next(batches)["image"]), batch)
        return {"image": images[indices % batch]}

    return ds.accumulate(lambda b: features(b["image"]), inputs, count, batch_size=batch, mesh=mesh)


def fid_metrics(
    exp: Experiment, state, generate: Callable, *, features: Callable | None = None, splits: int = 0
) -> dict[str, float]:
    """`test_fid`, `test_inception_score`, `test_inception_score_std` of eval.num_samples images
    of the run's sampler `generate(params, model_state, ids, mask, key)` against
    eval.reference_stats; `features` default: Inception with eval.inception_weights ({} when
    that is empty)."""
    config, mesh = exp.config, exp.ctx.mesh
    if features is None:
        if not config.eval.inception_weights:
            return {}
        variables = inception_weights.load_inception_params(config.eval.inception_weights)
        features = inception_features(variables, mesh)
    start, num_samples = time.perf_counter(), config.eval.num_samples
    if config.eval.reference_stats:
        reference = ds.load_reference(config.eval.reference_stats)
    else:
        reference = split_statistics(exp, features, limit=config.eval.num_examples)
        reference = reference.moments.mean_and_covariance()
    ids, mask = _split_captions(exp, config.eval.num_examples)
    key = jax.random.fold_in(jax.random.key(config.seed), _FID_SALT)

    @jax.jit
    def run(params, model_state, batch):  # one key a global batch: its first sample's index
        batch_key = jax.random.fold_in(key, batch["index"][0])
        return generate(params, model_state, batch["text"], batch["text_mask"], batch_key)

    metrics, _ = ds.evaluate_generated(
        lambda batch: run(state.ema_params, state.model_state, batch),
        features,
        num_samples,
        conditions=lambda i: {"text": ids[i % len(ids)], "text_mask": mask[i % len(ids)]},
        batch_size=config.eval.batch_size,
        mesh=mesh,
        reference=reference,
        splits=splits,
    )
    log.info(
        "FID and Inception Score of %d samples (%d captions) in %.1f s: %s",
        num_samples,
        len(ids),
        time.perf_counter() - start,
        metrics,
    )
    return {f"test_{k}": v for k, v in metrics.items()}
