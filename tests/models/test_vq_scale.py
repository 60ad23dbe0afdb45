"""Codebook health at scale: sharded EMA/restarts, cosine codes, chunked lookup, bf16, seeding."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vq_ops import kmeans_plus_plus, nearest_codes, nearest_codes_chunked
from crossmodal_jax.training import sharding

K, D, N = 16, 4, 64


def _init(vq, z):
    # jit everywhere: eager flax applies compile every op separately (slow on 2 cores).
    init = jax.jit(lambda z_: vq.init(jax.random.key(0), z_, train=False))
    return nn.meta.unbox(init(z[:1]))


def _apply(vq, variables, x, **kw):
    return jax.jit(lambda v, x_: vq.apply(v, x_, train=False, **kw))(variables, x)


def _half_dead(variables):
    """Mark half the codes as nearly unused so the next update restarts them."""
    stats = dict(variables["vq_stats"])
    stats["cluster_size"] = stats["cluster_size"].at[::2].set(1e-3)
    return {**variables, "vq_stats": stats}


@functools.partial(jax.jit, static_argnums=0)
def _update(vq, variables, z, key):
    (_, aux), new = vq.apply(variables, z, train=True, mutable=["vq_stats"], rngs={"vq": key})
    return new["vq_stats"], aux


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 4, "fsdp": 2}])
def test_sharded_update_with_restarts_is_identical_on_every_replica(mesh_shape):
    vq = VectorQuantizer(num_codes=K, code_dim=D, dead_code_threshold=0.5)
    z = jax.random.normal(jax.random.key(1), (N, D))
    variables = _half_dead(_init(vq, z))
    key = jax.random.key(2)
    one_stats, one_aux = jax.jit(lambda v, z_: _update(vq, v, z_, key))(variables, z)
    assert float(one_aux["restarts"]) == K // 2

    mesh = sharding.make_mesh(mesh_shape)
    data_axes = tuple(a for a in ("data", "fsdp") if a in mesh_shape)
    with jax.set_mesh(mesh):
        z_sharded = jax.device_put(z, NamedSharding(mesh, P(data_axes, None)))
        v_repl = jax.device_put(variables, NamedSharding(mesh, P()))
        stats, aux = jax.jit(
            lambda v, z_: _update(vq, v, z_, key), out_shardings=NamedSharding(mesh, P())
        )(v_repl, z_sharded)
    assert float(aux["restarts"]) == K // 2
    for name, arr in stats.items():
        shards = [np.asarray(s.data) for s in arr.addressable_shards]
        assert len(shards) == 8
        for s in shards[1:]:
            np.testing.assert_array_equal(s, shards[0], err_msg=f"{name} differs across replicas")
        np.testing.assert_allclose(shards[0], one_stats[name], rtol=1e-5, atol=1e-6)


def test_restarts_revive_dead_codes_over_training():
    """Codes far from the data die; with restarts every code ends up used, without not."""
    z_all = jax.random.normal(jax.random.key(3), (8, N, D))

    def run(threshold):
        vq = VectorQuantizer(num_codes=K, code_dim=D, decay=0.8, dead_code_threshold=threshold)
        variables = _init(vq, z_all[0])
        stats = dict(variables["vq_stats"])
        stats["codebook"] = stats["codebook"].at[1:].add(50.0)  # all but code 0 unreachable
        stats["embed_sum"] = stats["codebook"]
        step = jax.jit(lambda s, z_, k: _update(vq, {"vq_stats": s}, z_, k))
        for i, z in enumerate(z_all):
            stats, _ = step(stats, z, jax.random.key(i))
        _, aux = _apply(vq, {"vq_stats": stats}, z_all.reshape(-1, D))
        return float(aux["codebook_usage"])

    assert run(0.0) == 1.0 / K
    assert run(0.5) >= 0.75


@pytest.mark.parametrize("restart", [0.0, 5.0])
def test_cosine_codes_stay_unit_norm(restart):
    vq = VectorQuantizer(num_codes=K, code_dim=D, cosine=True, dead_code_threshold=restart)
    z = 3.0 * jax.random.normal(jax.random.key(4), (N, D))
    variables = _init(vq, z)
    norms = lambda cb: np.linalg.norm(np.asarray(cb), axis=-1)  # noqa: E731
    np.testing.assert_allclose(norms(variables["vq_stats"]["codebook"]), 1.0, rtol=1e-5)
    stats = variables["vq_stats"]
    for i in range(3):
        stats, aux = _update(vq, {"vq_stats": stats}, z, jax.random.key(i))
    np.testing.assert_allclose(norms(stats["codebook"]), 1.0, rtol=1e-5)
    if restart:
        assert float(aux["restarts"]) > 0
    # The output is the (unit-norm) code chosen by cosine similarity.
    z_q, aux = _apply(vq, {"vq_stats": stats}, z)
    zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
    np.testing.assert_array_equal(aux["indices"], (zn @ np.asarray(stats["codebook"]).T).argmax(1))
    np.testing.assert_allclose(norms(z_q), 1.0, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_lookup_matches_unchunked(chunk):
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(37, D)), jnp.float32)
    codebook = jnp.asarray(rng.normal(size=(K + 3, D)), jnp.float32)
    codebook = codebook.at[7].set(codebook[2])  # a tie: the lower index must win
    idx, dist = nearest_codes(z, codebook)
    idx_c, min_d = jax.jit(nearest_codes_chunked, static_argnums=2)(z, codebook, chunk)
    np.testing.assert_array_equal(idx_c, idx)
    np.testing.assert_allclose(min_d, dist.min(1), rtol=1e-5, atol=1e-5)
    vq = VectorQuantizer(num_codes=K, code_dim=D, lookup_chunk_size=chunk)
    vq_ref = VectorQuantizer(num_codes=K, code_dim=D)
    variables = _init(vq, z)
    a = _update(vq, variables, z, jax.random.key(0))
    b = _update(vq_ref, variables, z, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bf16_module_keeps_distances_and_stats_in_f32():
    # Inputs near 16: ||z||^2 ~ 256 leaves bf16 no bits for distance gaps of ~1e-2.
    rng = np.random.default_rng(6)
    z = jnp.asarray(16.0 + rng.uniform(-0.5, 0.5, size=(N, D)), jnp.bfloat16)
    codebook = np.asarray(z[:K], np.float64) + rng.normal(scale=0.05, size=(K, D))
    vq = VectorQuantizer(num_codes=K, code_dim=D, dtype=jnp.bfloat16, dead_code_threshold=0.1)
    variables = _init(vq, z.astype(jnp.float32))
    stats = {**variables["vq_stats"], "codebook": jnp.asarray(codebook, jnp.float32)}
    (z_q, aux), new = jax.jit(
        lambda v, z_: vq.apply(
            v, z_, train=True, mutable=["vq_stats"], rngs={"vq": jax.random.key(0)}
        )
    )({"vq_stats": stats}, z)
    z64 = np.asarray(z, np.float64)
    want = ((z64[:, None] - codebook[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(aux["indices"], want)
    assert z_q.dtype == jnp.bfloat16
    for name, arr in new["vq_stats"].items():
        assert arr.dtype == jnp.float32, name
    for name in ("commitment_loss", "codebook_usage", "perplexity", "dead_codes", "restarts"):
        assert aux[name].dtype == jnp.float32, name


@pytest.mark.parametrize("init", ["batch", "kmeans++"])
def test_data_init_puts_codes_on_first_batch_encodings(init):
    # decay=1 freezes the EMA, so after the first update the codebook is exactly the seed.
    vq = VectorQuantizer(num_codes=K, code_dim=D, codebook_init=init, decay=1.0)
    z = jax.random.normal(jax.random.key(7), (N, D))
    variables = _init(vq, z)
    assert int(variables["vq_stats"]["initialized"]) == 0
    stats, aux = _update(vq, variables, z, jax.random.key(8))
    stats2, _ = _update(vq, variables, z, jax.random.key(8))
    jax.tree.map(np.testing.assert_array_equal, stats, stats2)  # deterministic from the key
    assert int(stats["initialized"]) == 1
    z_np, cb = np.asarray(z), np.asarray(stats["codebook"])
    rows = [int(np.argmin(np.abs(z_np - c).max(-1))) for c in cb]
    np.testing.assert_allclose(cb, z_np[rows], atol=1e-6)
    assert len(set(rows)) == K  # distinct encodings (N >= K)
    # The first batch is already quantized with the seeded codebook.
    assert float(aux["codebook_usage"]) > 0.5
    # A second update does not re-seed: it equals a plain EMA step from the seeded state.
    vq = VectorQuantizer(num_codes=K, code_dim=D, codebook_init=init)
    z2 = jax.random.normal(jax.random.key(9), (N, D))
    after, _ = _update(vq, {"vq_stats": stats}, z2, jax.random.key(10))
    ref = VectorQuantizer(num_codes=K, code_dim=D)
    plain = {k: v for k, v in stats.items() if k != "initialized"}
    want, _ = _update(ref, {"vq_stats": plain}, z2, jax.random.key(10))
    for name, arr in want.items():
        np.testing.assert_allclose(after[name], arr, rtol=1e-6, atol=1e-7)


def test_kmeans_plus_plus_spreads_over_clusters():
    # Four tight, far-apart clusters; D^2 seeding of 4 codes takes one from each.
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    rng = np.random.default_rng(11)
    z = np.concatenate([c + 0.01 * rng.normal(size=(25, 2)) for c in centers]).astype(np.float32)
    codes = np.asarray(kmeans_plus_plus(jax.random.key(12), jnp.asarray(z), 4))
    nearest_center = np.argmin(((codes[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest_center.tolist()) == [0, 1, 2, 3]
    assert all(np.min(np.abs(z - c).max(-1)) == 0 for c in codes)  # codes are data rows


def test_lookup_dim_projects_and_keeps_code_dim_interface():
    vq = VectorQuantizer(num_codes=K, code_dim=8, lookup_dim=2)
    z = jax.random.normal(jax.random.key(13), (3, 5, 8))
    variables = _init(vq, z)
    assert variables["vq_stats"]["codebook"].shape == (K, 2)
    z_q, aux = _apply(vq, variables, z)
    assert z_q.shape == z.shape
    np.testing.assert_allclose(
        z_q,
        jax.jit(lambda v, i: vq.apply(v, i, method=VectorQuantizer.lookup))(
            variables, aux["indices"]
        ),
        atol=1e-5,
    )

    # Gradients reach both projections (down via the commitment loss, up via the output).
    def loss(p):
        z_q, aux = vq.apply({**variables, "params": p}, z, train=False)
        return jnp.sum(z_q), aux["commitment_loss"]

    jac = jax.jit(jax.jacrev(loss))(variables["params"])
    assert float(jnp.abs(jac[0]["proj_up"]["kernel"]).sum()) > 0
    assert float(jnp.abs(jac[1]["proj_down"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("k", [7, 256, 300])  # both sides of SMALL_CODEBOOK
def test_nearest_code_equals_the_reference_lookup_with_ties_to_the_lowest_index(k):
    from crossmodal_jax.models.vq_ops import nearest_code

    z = jax.random.normal(jax.random.key(0), (50, 3))
    codebook = jax.random.normal(jax.random.key(1), (k, 3))
    codebook = codebook.at[k - 1].set(codebook[2])  # a duplicate code: the lower index wins
    want_idx, dist = nearest_codes(z, codebook)
    idx, best = nearest_code(z, codebook)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(want_idx))
    assert int(jnp.sum(idx == k - 1)) == 0
    np.testing.assert_allclose(np.asarray(best), np.min(np.asarray(dist), axis=1), atol=1e-5)
