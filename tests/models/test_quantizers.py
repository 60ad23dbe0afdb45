"""FSQ, LFQ, residual VQ and the rotation trick: against vector-quantize-pytorch, closed forms,
and under a data x fsdp mesh of 8 fake devices."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from crossmodal_jax.models.fsq import FiniteScalarQuantizer, fsq_indices_to_codes
from crossmodal_jax.models.lfq import LookupFreeQuantizer, lfq_entropy_terms
from crossmodal_jax.models.quantizers import build_quantizer, check_spec
from crossmodal_jax.models.rvq import ResidualQuantizer
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vq_ops import rotation_trick
from crossmodal_jax.training import sharding


def _init(q, z):
    return nn.meta.unbox(jax.jit(lambda z_: q.init(jax.random.key(0), z_, train=False))(z[:1]))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run(q, variables, z, train):
    (out, aux), new = q.apply(
        variables, z, train=train, mutable=["vq_stats"], rngs={"vq": jax.random.key(3)}
    )
    return out, aux, new


def _torch():
    pytest.importorskip("vector_quantize_pytorch")
    import torch

    return torch


@pytest.mark.parametrize("levels,dim", [((8, 5, 5, 5), 4), ((7, 5, 3), 6)])
def test_fsq_codes_and_outputs_equal_vector_quantize_pytorch(levels, dim):
    torch = _torch()
    from vector_quantize_pytorch import FSQ

    z = np.random.default_rng(0).normal(0, 2, (3, 50, dim)).astype(np.float32)
    peer = FSQ(levels=list(levels), dim=dim)
    ours = FiniteScalarQuantizer(levels=levels, code_dim=dim)
    variables = _init(ours, jnp.asarray(z))
    if dim != len(levels):  # same projections in both (torch Linear weight is [out, in])
        p = variables["params"]
        with torch.no_grad():
            for name in ("project_in", "project_out"):
                layer = getattr(peer, name)
                layer.weight.copy_(torch.from_numpy(np.asarray(p[name]["kernel"]).T.copy()))
                layer.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
    with torch.no_grad():
        want_out, want_ids = peer(torch.from_numpy(z))
    out, aux, _ = _run(ours, variables, jnp.asarray(z), False)
    np.testing.assert_array_equal(np.asarray(aux["indices"]), want_ids.numpy())
    np.testing.assert_allclose(np.asarray(out), want_out.numpy(), atol=1e-5)
    # lookup inverts the ids, and the grid's codes come back exactly.
    np.testing.assert_allclose(
        np.asarray(ours.apply(variables, aux["indices"], method=ours.lookup)), out, atol=1e-5
    )
    grid = fsq_indices_to_codes(jnp.arange(ours.vocab_size), levels)
    np.testing.assert_allclose(np.asarray(grid), peer.implicit_codebook.numpy(), atol=1e-7)


def test_fsq_gradient_is_the_bounds_derivative():
    levels = (5, 4)
    q = FiniteScalarQuantizer(levels=levels, code_dim=2)
    z = jnp.array([[0.3, -0.7], [1.5, 0.1]])
    variables = _init(q, z)
    grad = jax.grad(lambda z_: jnp.sum(q.apply(variables, z_, train=True)[0]))(z)
    # d/dz [tanh(z + shift) * half_l - offset] / half_width: tanh's derivative, rescaled.
    half_l = (np.array(levels) - 1) * 1.001 / 2
    shift = np.arctanh(np.where(np.array(levels) % 2 == 0, 0.5, 0.0) / half_l)
    want = (1 - np.tanh(np.asarray(z) + shift) ** 2) * half_l / (np.array(levels) // 2)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5)


def test_lfq_codes_and_entropy_terms_equal_vector_quantize_pytorch():
    torch = _torch()
    from vector_quantize_pytorch import LFQ

    z = np.random.default_rng(1).normal(0, 0.2, (2, 40, 6)).astype(np.float32)
    peer = LFQ(dim=6, codebook_size=64, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    peer.train()
    (want_out, want_ids, want_loss), parts = peer(
        torch.from_numpy(z), inv_temperature=100.0, return_loss_breakdown=True
    )
    ours = LookupFreeQuantizer(code_dim=6, entropy_weight=0.1, commitment_cost=0.25)
    out, aux, _ = _run(ours, {}, jnp.asarray(z), True)
    np.testing.assert_array_equal(np.asarray(aux["indices"]), want_ids.numpy())
    np.testing.assert_array_equal(np.asarray(out), want_out.detach().numpy())
    for ours_key, theirs in [
        ("per_sample_entropy", parts.per_sample_entropy),
        ("codebook_entropy", parts.batch_entropy),
    ]:
        np.testing.assert_allclose(float(aux[ours_key]), float(theirs), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(aux["loss"]), float(want_loss), rtol=1e-4, atol=1e-6)
    codes = ours.apply({}, aux["indices"], method=ours.lookup)
    np.testing.assert_array_equal(np.asarray(codes), want_out.detach().numpy())


def test_lfq_entropy_is_float32_and_finite_in_a_bfloat16_model():
    z = jax.random.normal(jax.random.key(0), (64, 8)).astype(jnp.bfloat16) * 30  # large logits
    q = LookupFreeQuantizer(code_dim=8, dtype=jnp.bfloat16)
    out, aux, _ = _run(q, {}, z, True)
    assert out.dtype == jnp.bfloat16 and aux["entropy_loss"].dtype == jnp.float32
    want = lfq_entropy_terms(z.astype(jnp.float32), inv_temperature=100.0)
    np.testing.assert_allclose(float(aux["per_sample_entropy"]), float(want[0]), rtol=1e-6)
    np.testing.assert_allclose(float(aux["codebook_entropy"]), float(want[1]), rtol=1e-6)
    assert np.isfinite(float(aux["loss"]))


def test_residual_vq_codes_equal_vector_quantize_pytorch_given_the_same_codebooks():
    torch = _torch()
    from vector_quantize_pytorch import ResidualVQ

    stages, k, d = 3, 16, 4
    z = np.random.default_rng(2).normal(0, 1, (2, 30, d)).astype(np.float32)
    ours = ResidualQuantizer(stage=VectorQuantizer(num_codes=k, code_dim=d), num_stages=stages)
    variables = _init(ours, jnp.asarray(z))
    peer = ResidualVQ(dim=d, num_quantizers=stages, codebook_size=k)
    peer.eval()
    with torch.no_grad():
        for i, layer in enumerate(peer.layers):
            book = np.array(variables["vq_stats"][f"stages_{i}"]["codebook"])
            layer._codebook.embed.copy_(torch.from_numpy(np.array(book))[None])
        want_out, want_ids, _ = peer(torch.from_numpy(z))
    out, aux, _ = _run(ours, variables, jnp.asarray(z), False)
    np.testing.assert_array_equal(np.asarray(aux["indices"]), want_ids.numpy())
    np.testing.assert_allclose(np.asarray(out), want_out.numpy(), atol=1e-5)
    summed = ours.apply(variables, aux["indices"], method=ours.lookup)
    np.testing.assert_allclose(np.asarray(summed), np.asarray(out), atol=1e-5)


def test_quantizer_dropout_keeps_a_prefix_of_stages_and_the_gradient_is_straight_through():
    d = 3
    z = jax.random.normal(jax.random.key(4), (20, d))
    q = ResidualQuantizer(stage=VectorQuantizer(num_codes=8, code_dim=d), num_stages=3, dropout=0.9)
    variables = _init(q, z)
    out, aux, _ = _run(q, variables, z, True)
    n = int(aux["active_stages"])
    assert 1 <= n <= 3
    books = [variables["vq_stats"][f"stages_{i}"]["codebook"] for i in range(3)]
    prefix = sum(books[i][aux["indices"][..., i]] for i in range(n))
    np.testing.assert_allclose(np.asarray(out), np.asarray(prefix), atol=1e-5)
    grad = jax.grad(
        lambda z_: jnp.sum(q.apply(variables, z_, train=False)[0] * jnp.arange(1.0, d + 1))
    )(z)
    np.testing.assert_allclose(np.asarray(grad), np.tile(np.arange(1.0, d + 1), (20, 1)))


def test_rotation_trick_forward_is_the_code_and_its_jacobian_a_scaled_rotation():
    z = jnp.array([0.3, -1.2, 0.5, 2.0])
    q = jnp.array([1.0, 0.4, -0.2, 0.7])
    np.testing.assert_array_equal(np.asarray(rotation_trick(z, q)), np.asarray(q))
    jac = np.asarray(jax.jacobian(lambda z_: rotation_trick(z_, q))(z), np.float64)
    scale = np.linalg.norm(q) / np.linalg.norm(z)
    rot = jac / scale
    np.testing.assert_allclose(rot.T @ rot, np.eye(4), atol=1e-5)  # a rotation...
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    np.testing.assert_allclose(rot @ (z / np.linalg.norm(z)), q / np.linalg.norm(q), atol=1e-6)


def test_rotation_trick_gradient_equals_vector_quantize_pytorch():
    torch = _torch()
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    rng = np.random.default_rng(5)
    z, q, w = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(3))
    zt = torch.from_numpy(z).requires_grad_()
    (rotate_to(zt, torch.from_numpy(q)) * torch.from_numpy(w)).sum().backward()
    ours = jax.grad(lambda z_: jnp.sum(rotation_trick(z_, jnp.asarray(q)) * w))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(ours), zt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_vq_with_the_rotation_trick_changes_only_the_gradient():
    z = jax.random.normal(jax.random.key(6), (16, 4))
    plain, rotated = (VectorQuantizer(num_codes=8, code_dim=4, rotation_trick=r) for r in (0, 1))
    variables = _init(plain, z)
    out_p, aux_p, _ = _run(plain, variables, z, False)
    out_r, aux_r, _ = _run(rotated, variables, z, False)
    np.testing.assert_allclose(np.asarray(out_p), np.asarray(out_r), atol=1e-6)  # both the codes
    np.testing.assert_array_equal(np.asarray(aux_p["indices"]), np.asarray(aux_r["indices"]))

    def grad(q):
        return jax.grad(lambda z_: jnp.sum(q.apply(variables, z_, train=False)[0] ** 2))(z)

    np.testing.assert_allclose(np.asarray(grad(plain)), 2 * np.asarray(out_p), rtol=1e-6)
    assert not np.allclose(np.asarray(grad(rotated)), np.asarray(grad(plain)))


SPEC = dict(
    num_codes=8,
    code_dim=4,
    decay=0.9,
    epsilon=1e-5,
    commitment_cost=0.25,
    dead_code_threshold=0.5,
    cosine=False,
    lookup_dim=0,
    codebook_init="random",
    lookup_chunk_size=0,
    rotation_trick=False,
    levels=(5, 5, 3, 3),
    entropy_weight=0.1,
    diversity_gamma=1.0,
    inv_temperature=100.0,
    residual_quantizer="vq",
    residual_stages=2,
    quantizer_dropout=0.5,
)


@pytest.mark.parametrize(
    "kind", ["fsq", "lfq", "rvq", "rvq_fsq", "rvq_lfq"], ids=lambda k: k.replace("_", "-")
)
def test_every_quantizer_is_identical_on_every_shard_of_an_8_device_mesh(kind):
    name, _, stage = kind.partition("_")
    q = build_quantizer({**SPEC, "quantizer": name, "residual_quantizer": stage or "vq"})
    z = jax.random.normal(jax.random.key(1), (64, 4))
    variables = _init(q, z)
    one_out, one_aux, one_new = _run(q, variables, z, True)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    with jax.set_mesh(mesh):
        z_sharded = jax.device_put(z, NamedSharding(mesh, P(("data", "fsdp"), None)))
        v_repl = jax.device_put(variables, NamedSharding(mesh, P()))
        out, aux, new = jax.jit(
            lambda v, z_: _run(q, v, z_, True), out_shardings=NamedSharding(mesh, P())
        )(v_repl, z_sharded)
    for key in one_aux:
        np.testing.assert_allclose(np.asarray(aux[key]), np.asarray(one_aux[key]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(one_out), rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
        new,
        one_new,
    )


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(quantizer="pq"), "quantizer='pq'; expected one of"),
        (dict(quantizer="fsq", levels=(8, 2)), "levels=(8, 2): fsq needs"),
        (dict(quantizer="lfq", code_dim=20), "code_dim=20: lfq codes are code_dim bits"),
        (dict(quantizer="rvq", residual_quantizer="rvq"), "residual_quantizer='rvq'"),
        (dict(quantizer="rvq", quantizer_dropout=1.0), "quantizer_dropout=1.0"),
    ],
)
def test_a_bad_quantizer_spec_is_one_line_naming_the_key(change, message):
    assert check_spec({**SPEC, **change}).startswith(message)


@pytest.mark.parametrize(
    "change",
    [
        dict(quantizer="vq"),
        dict(quantizer="fsq"),  # 4 dims, levels (5, 5, 3, 3): no projection
        dict(quantizer="fsq", levels=(5, 3)),  # projected 2 -> 4
        dict(quantizer="lfq"),
        dict(quantizer="rvq"),
        dict(quantizer="rvq", residual_quantizer="fsq"),
    ],
    ids=["vq", "fsq", "fsq-projected", "lfq", "rvq", "rvq-fsq"],
)
def test_snapping_a_noisy_code_vector_gives_back_that_code_vector(change):
    """What the Gaussian and flow samplers rely on (sample.snap_to_codebook): a generated latent
    near a code's vector decodes as that code, whatever the quantizer."""
    q = build_quantizer({**SPEC, **change})
    z = jax.random.normal(jax.random.key(7), (32, 4))
    variables = _init(q, z)
    _, aux, _ = _run(q, variables, z, False)
    codes = q.apply(variables, aux["indices"], method=q.lookup)
    noise = 1e-3 * jax.random.normal(jax.random.key(8), codes.shape)
    snapped = jax.jit(lambda v, c: q.apply(v, c, method=q.snap))(variables, codes + noise)
    np.testing.assert_allclose(np.asarray(snapped), np.asarray(codes), atol=1e-5)


def test_fsq_snaps_to_the_nearest_point_of_its_grid():
    levels = (4, 3)
    q = FiniteScalarQuantizer(levels=levels, code_dim=2)
    grid = np.asarray(fsq_indices_to_codes(jnp.arange(12), levels))
    z = np.random.default_rng(9).uniform(-1.5, 1.5, (200, 2)).astype(np.float32)
    want = grid[np.argmin(((z[:, None] - grid[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_allclose(np.asarray(q.apply({}, jnp.asarray(z), method=q.snap)), want)
