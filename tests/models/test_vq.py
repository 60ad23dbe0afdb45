"""Vector quantizer: straight-through estimator, nearest codes, EMA maths, health metrics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.models.vq import (
    VectorQuantizer,
    codebook_perplexity,
    codebook_usage,
    ema_update,
    nearest_codes,
    straight_through,
)

K, D = 6, 3


def _np_ema(cluster_size, embed_sum, z, idx, decay, eps):
    """The EMA update written out by hand (Sonnet VectorQuantizerEMA, Laplace smoothing)."""
    onehot = np.eye(len(cluster_size))[idx]
    cs = decay * cluster_size + (1 - decay) * onehot.sum(0)
    es = decay * embed_sum + (1 - decay) * onehot.T @ z
    n = cs.sum()
    smoothed = (cs + eps) / (n + len(cs) * eps) * n
    return cs, es, es / smoothed[:, None]


def test_straight_through_gradient_is_identity():
    z = jax.random.normal(jax.random.key(0), (4, D))
    z_q = jax.random.normal(jax.random.key(1), (4, D))
    w = jax.random.normal(jax.random.key(2), (4, D))
    np.testing.assert_allclose(straight_through(z, z_q), z_q, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda z_: jnp.sum(w * straight_through(z_, z_q)))(z)
    np.testing.assert_allclose(grad, w, rtol=1e-6)


def test_nearest_codes_matches_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, D)).astype(np.float32)
    codebook = rng.normal(size=(K, D)).astype(np.float32)
    idx, dist = nearest_codes(jnp.asarray(z), jnp.asarray(codebook))
    brute = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idx, brute.argmin(1))
    assert idx.dtype == jnp.int32 and dist.dtype == jnp.float32


def test_ema_update_matches_hand_formula():
    rng = np.random.default_rng(1)
    cs0 = rng.uniform(0.5, 2.0, size=K)
    es0 = rng.normal(size=(K, D))
    z = rng.normal(size=(10, D))
    idx = np.array([0, 0, 1, 2, 2, 2, 3, 0, 1, 1])  # codes 4 and 5 get nothing
    want = _np_ema(cs0, es0, z, idx, 0.9, 1e-3)
    got = ema_update(
        jnp.asarray(cs0, jnp.float32),
        jnp.asarray(es0, jnp.float32),
        jnp.asarray(z, jnp.float32),
        jax.nn.one_hot(idx, K),
        decay=0.9,
        epsilon=1e-3,
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _module_with_stats(cs, es, cb, **kw):
    vq = VectorQuantizer(num_codes=K, code_dim=D, **kw)
    z = jnp.zeros((2, D))
    variables = nn.meta.unbox(vq.init(jax.random.key(0), z, train=False))
    stats = {
        "cluster_size": jnp.asarray(cs, jnp.float32),
        "embed_sum": jnp.asarray(es, jnp.float32),
        "codebook": jnp.asarray(cb, jnp.float32),
    }
    assert jax.tree.map(jnp.shape, stats) == jax.tree.map(jnp.shape, variables["vq_stats"])
    return vq, {"vq_stats": stats}


def test_module_ema_update_matches_hand_formula():
    rng = np.random.default_rng(2)
    cs0 = rng.uniform(0.5, 2.0, size=K)
    es0 = rng.normal(size=(K, D))
    cb0 = es0 / cs0[:, None]
    z = rng.normal(size=(2, 4, D)).astype(np.float32)
    vq, variables = _module_with_stats(cs0, es0, cb0, decay=0.8, epsilon=1e-4)
    (z_q, aux), new = vq.apply(variables, jnp.asarray(z), train=True, mutable=["vq_stats"])

    idx = ((z.reshape(-1, 1, D) - cb0[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(aux["indices"], idx.reshape(2, 4))
    # Quantization uses the codebook before the update.
    np.testing.assert_allclose(z_q, cb0[idx].reshape(z.shape), rtol=1e-5, atol=1e-6)
    want_cs, want_es, want_cb = _np_ema(cs0, es0, z.reshape(-1, D), idx, 0.8, 1e-4)
    stats = new["vq_stats"]
    np.testing.assert_allclose(stats["cluster_size"], want_cs, rtol=1e-5)
    np.testing.assert_allclose(stats["embed_sum"], want_es, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["codebook"], want_cb, rtol=1e-5, atol=1e-6)
    want_commit = 0.25 * np.mean((z - cb0[idx].reshape(z.shape)) ** 2)
    np.testing.assert_allclose(aux["commitment_loss"], want_commit, rtol=1e-5)


def test_usage_and_perplexity_on_known_assignments():
    idx = jnp.array([0, 0, 1, 1])
    np.testing.assert_allclose(codebook_usage(idx, 4), 0.5)
    np.testing.assert_allclose(codebook_perplexity(idx, 4), 2.0, rtol=1e-6)
    uniform = jnp.arange(8) % 4
    np.testing.assert_allclose(codebook_usage(uniform, 4), 1.0)
    np.testing.assert_allclose(codebook_perplexity(uniform, 4), 4.0, rtol=1e-6)
    np.testing.assert_allclose(codebook_perplexity(jnp.zeros(5, jnp.int32), 4), 1.0)


def test_dead_code_restart_revives_codes_with_batch_encodings():
    # Codes 0-1 sit in the data; codes 2-5 are far away and have tiny cluster sizes.
    cb0 = np.zeros((K, D))
    cb0[0], cb0[1] = [1, 0, 0], [0, 1, 0]
    cb0[2:] = 100.0
    cs0 = np.array([5.0, 5.0, 0.01, 0.01, 0.01, 0.01])
    vq, variables = _module_with_stats(cs0, cb0 * cs0[:, None], cb0, dead_code_threshold=0.5)
    z = jax.random.normal(jax.random.key(3), (16, D))
    (_, aux), new = vq.apply(
        variables, z, train=True, mutable=["vq_stats"], rngs={"vq": jax.random.key(4)}
    )
    assert float(aux["restarts"]) == 4 and float(aux["dead_codes"]) == 4
    stats = new["vq_stats"]
    assert np.all(np.asarray(stats["cluster_size"][2:]) > 0.5)
    z_np = np.asarray(z)
    for code in np.asarray(stats["codebook"][2:]):
        assert np.min(np.abs(z_np - code).max(-1)) < 1e-6, "restarted code is not a batch encoding"
    np.testing.assert_allclose(
        stats["embed_sum"][2:], stats["codebook"][2:] * stats["cluster_size"][2:, None], rtol=1e-6
    )
    # Live codes follow the plain EMA update.
    assert np.all(np.asarray(stats["cluster_size"][:2]) > 4.0)


def test_eval_changes_nothing():
    vq = VectorQuantizer(num_codes=K, code_dim=D, dead_code_threshold=10.0)
    z = jax.random.normal(jax.random.key(5), (3, 4, D))
    variables = nn.meta.unbox(vq.init(jax.random.key(0), z, train=False))
    (z_q, aux), new = vq.apply(variables, z, train=False, mutable=["vq_stats"])
    jax.tree.map(np.testing.assert_array_equal, new, variables)
    assert float(aux["restarts"]) == 0
    assert float(aux["dead_codes"]) == K  # all init cluster sizes (1) are below 10
    assert aux["indices"].shape == (3, 4) and aux["indices"].dtype == jnp.int32
    # Non-mutable training call: nothing to update, no error.
    z_q2, _ = vq.apply(variables, z, train=True)
    np.testing.assert_array_equal(z_q, z_q2)


def test_lookup_and_stats_annotations():
    vq = VectorQuantizer(num_codes=K, code_dim=D)
    variables = vq.init(jax.random.key(0), jnp.zeros((1, D)), train=False)
    specs = nn.get_partition_spec(variables["vq_stats"])
    assert specs["codebook"] == jax.sharding.PartitionSpec("codebook", "code_dim")
    unboxed = nn.meta.unbox(variables)
    codes = vq.apply(unboxed, jnp.array([[1, 2], [3, 3]]), method=VectorQuantizer.lookup)
    np.testing.assert_array_equal(codes[1, 0], unboxed["vq_stats"]["codebook"][3])
    assert codes.shape == (2, 2, D)


@pytest.mark.parametrize("shape", [(8, D), (2, 2, 2, D)])
def test_quantized_output_is_a_code(shape):
    vq = VectorQuantizer(num_codes=K, code_dim=D)
    z = jax.random.normal(jax.random.key(6), shape)
    variables = nn.meta.unbox(vq.init(jax.random.key(0), z, train=False))
    z_q, aux = vq.apply(variables, z, train=False)
    codebook = variables["vq_stats"]["codebook"]
    np.testing.assert_allclose(z_q, codebook[aux["indices"]], rtol=1e-5, atol=1e-6)
