"""N-D VQ-VAE (per-level strides, 3-D video convs), token-id DiT, remat and bf16 compute."""

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.layers import conv
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vqvae import VQVAE, latent_shape
from crossmodal_jax.training.sharding import (
    CONV_IN,
    CONV_OUT,
    DEFAULT_RULES,
    logical_shardings,
    make_mesh,
)

B, L, V, CL, CV = 2, 6, 7, 4, 11  # batch, target length, vocab, condition length/vocab


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="unsafe_rbg")  # fast to compile on XLA:CPU


def _perturbed(params, seed=1, scale=0.2):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), params)


# ------------------------------------------------------------------------------------------ VQ-VAE


def _vqvae(**kw) -> VQVAE:
    cfg = dict(channels=4, channel_mult=(1, 1, 2), num_res_blocks=1, code_dim=4, num_codes=8)
    return VQVAE(**{**cfg, **kw})


def _shapes(model: VQVAE, x_shape):
    """(reconstruction shape, ids shape, boxed abstract variables) without compiling anything."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), _key(0), x)
    rec, aux = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), nn.meta.unbox(variables), x
    )
    return rec.shape, aux["indices"].shape, variables


@pytest.mark.parametrize(
    "kw, x_shape, grid",
    [
        ({}, (B, 8, 12, 1), (2, 3)),  # default: 2 on every axis
        ({"strides": ((2, 2), (2, 2))}, (B, 8, 12, 1), (2, 3)),  # the same, spelled out
        ({"strides": ((2, 2), (1, 2))}, (B, 8, 16, 1), (4, 4)),  # spectrogram [frames, mels]
        ({"strides": ((1, 2, 2), (2, 2, 2)), "spatial_dims": 3}, (B, 4, 8, 8, 1), (2, 2, 2)),
        ({"strides": [[1, 2, 2], [2, 1, 1]], "spatial_dims": 3}, (B, 4, 4, 8, 3), (2, 2, 4)),
    ],
)
def test_vqvae_nd_shapes(kw, x_shape, grid):
    model = _vqvae(in_channels=x_shape[-1], **kw)
    rec_shape, ids_shape, variables = _shapes(model, x_shape)
    assert rec_shape == x_shape
    assert ids_shape == (B, *grid)
    assert latent_shape(x_shape[1:-1], model.channel_mult, model.strides) == grid
    downsample = variables["params"]["encoder"]["down0_downsample"]
    if len(x_shape) == 5:  # video convs are (2+1)-D: per-frame spatial kernel, then temporal
        assert downsample["spatial"]["kernel"].names == (None, None, CONV_IN, CONV_OUT)
    else:
        assert downsample["kernel"].names == (None,) * (len(x_shape) - 2) + (CONV_IN, CONV_OUT)


def test_latent_shape_old_signature_and_errors():
    assert latent_shape((8, 8), (1, 2)) == (4, 4)
    assert latent_shape((8, 32, 32), (1, 2, 2), ((1, 2, 2), (2, 2, 2))) == (4, 8, 8)
    with pytest.raises(ValueError, match="not divisible"):
        latent_shape((8, 12), (1, 2), ((1, 8),))
    with pytest.raises(ValueError, match="expected len\\(channel_mult\\) - 1 = 2"):
        latent_shape((8, 8), (1, 2, 2), ((2, 2),))
    with pytest.raises(ValueError, match="one per spatial axis"):
        latent_shape((8, 8), (1, 2), ((2, 2, 2),))


@pytest.mark.parametrize(
    "kw, x_shape, match",
    [
        ({"strides": ((2, 2),)}, (B, 8, 8, 1), "expected len"),  # 1 level given, 2 needed
        ({}, (B, 6, 8, 1), "not divisible"),  # 6 does not divide by 4
        ({"strides": ((1, 2, 2), (2, 2, 2))}, (B, 4, 8, 8, 1), "one per spatial axis"),
        ({"spatial_dims": 3}, (B, 8, 8, 1), "rank"),
    ],
)
def test_vqvae_rejects_bad_strides_and_inputs(kw, x_shape, match):
    model = _vqvae(**kw)
    with pytest.raises(ValueError, match=match):
        _shapes(model, x_shape)


def test_conv_kernel_and_strides_per_axis():
    layer = conv(5, (1, 3, 3), strides=(1, 2, 2), ndim=3)
    x = jax.ShapeDtypeStruct((B, 4, 8, 8, 2), jnp.float32)
    variables = jax.eval_shape(layer.init, _key(0), x)
    assert variables["params"]["spatial"]["kernel"].value.shape == (3, 3, 2, 5)
    assert "temporal" not in variables["params"]  # kt = 1, time stride 1: nothing to do in time
    assert jax.eval_shape(layer.apply, nn.meta.unbox(variables), x).shape == (B, 4, 4, 4, 5)
    layer = conv(5, 3, strides=(2, 1, 2), ndim=3)
    variables = jax.eval_shape(layer.init, _key(0), x)
    assert variables["params"]["temporal"]["kernel"].value.shape == (3, 5, 5)
    assert jax.eval_shape(layer.apply, nn.meta.unbox(variables), x).shape == (B, 2, 8, 4, 5)


def test_factorized_conv3d_equals_its_two_convs():
    """(2+1)-D = a 2-D conv on every frame, then a 1-D conv over time, with the same kernels."""
    layer = conv(3, 3, ndim=3)
    x = jax.random.normal(_key(1), (2, 4, 5, 6, 2))
    params = nn.meta.unbox(layer.init(_key(0), x))["params"]
    dn2, dn1 = ("NHWC", "HWIO", "NHWC"), ("NWC", "WIO", "NWC")
    sp, tm = params["spatial"], params["temporal"]
    y = (
        jax.lax.conv_general_dilated(
            x.reshape(8, 5, 6, 2), sp["kernel"], (1, 1), "SAME", dimension_numbers=dn2
        )
        + sp["bias"]
    )
    y = y.reshape(2, 4, 5, 6, 3).transpose(0, 2, 3, 1, 4).reshape(60, 4, 3)
    y = jax.lax.conv_general_dilated(y, tm["kernel"], (1,), "SAME", dimension_numbers=dn1)
    y = (y + tm["bias"]).reshape(2, 5, 6, 4, 3).transpose(0, 3, 1, 2, 4)
    np.testing.assert_allclose(layer.apply({"params": params}, x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected ndim=3"):
        conv(5, (3, 3), ndim=3)


def test_video_vqvae_round_trip_and_sharded_gradients():
    """3-D convs end to end: ids decode to the reconstruction, and the gradient on a data x fsdp x
    tensor mesh is exact. Without the input pin of layers.Conv the 3-D gradients are as wrong as
    the 2-D ones were (relative error ~1e7, checked by hand)."""
    model = _vqvae(
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=0,
        strides=((1, 2, 2),),
        spatial_dims=3,
        in_channels=1,
    )
    # Batch 4 = the data-parallel size (data x fsdp) of the mesh below, as validation requires:
    # with fewer examples than batch shards, XLA pads the batch and the reshapes of the (2+1)-D
    # convs then give wrong gradients.
    b = 4
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, 2, 4, 4, 1)), jnp.float32)
    boxed = jax.jit(lambda k: model.init(k, x, train=False))(_key(1))
    v = nn.meta.unbox(boxed)

    def loss(params):
        x_rec, aux = model.apply({**v, "params": params}, x, train=False)
        return jnp.mean((x_rec - x) ** 2), (x_rec, aux["indices"])

    fn = jax.grad(loss, has_aux=True)
    grads, (x_rec, ids) = jax.jit(fn)(v["params"])
    assert ids.shape == (b, 2, 2, 2) and ids.dtype == jnp.int32 and x_rec.shape == x.shape
    decode = jax.jit(lambda v, ids: model.apply(v, ids, method=VQVAE.decode_indices))
    np.testing.assert_allclose(decode(v, ids), x_rec, atol=1e-5)
    assert sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads["encoder"])) > 0

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = logical_shardings(boxed["params"], mesh, DEFAULT_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded, _ = jax.jit(fn)(jax.device_put(v["params"], shardings))
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5), sharded, grads
    )


# --------------------------------------------------------------------------------------- TokenDiT


def _token_dit(**kw) -> TokenDiT:
    cfg = dict(
        seq_len=L,
        vocab_size=V,
        hidden_size=16,
        depth=2,
        num_heads=2,
        cond_vocab_size=CV,
        cond_len=CL,
    )
    return TokenDiT(**{**cfg, **kw})


def _token_inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    t = jnp.asarray(rng.uniform(0, 1000, B), jnp.float32)
    cond = jnp.asarray(rng.integers(0, CV, (B, CL)), jnp.int32)
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    return ids, t, cond, mask


@pytest.fixture(scope="module")
def token_setup():
    model = _token_dit()
    ids, t, cond, mask = _token_inputs()
    boxed = jax.jit(model.init)(_key(0), ids, t, cond, mask)
    return model, boxed, jax.jit(model.apply)


def test_token_dit_logits_are_zero_at_init(token_setup):
    model, boxed, apply = token_setup
    ids, t, cond, mask = _token_inputs(seed=3)
    logits = apply(nn.meta.unbox(boxed), ids, t, cond, mask)
    assert logits.shape == (B, L, V) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, 0.0)
    assert nn.meta.unbox(boxed)["params"]["token_embed"]["embedding"].shape == (V, 16)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)


def test_token_dit_condition_mask_semantics(token_setup):
    _, boxed, apply = token_setup
    params = _perturbed(nn.meta.unbox(boxed))
    ids, t, cond, mask = _token_inputs()
    base = apply(params, ids, t, cond, mask)
    assert float(jnp.abs(base).max()) > 1e-3
    # Example 0 masks positions 2-3: changing them changes nothing anywhere.
    np.testing.assert_array_equal(apply(params, ids, t, cond.at[0, 3].set(0), mask), base)
    # A visible condition token does change both examples' logits.
    changed = apply(params, ids, t, cond.at[:, 0].set((cond[:, 0] + 1) % CV), mask)
    assert np.all(np.asarray(jnp.abs(changed - base).max(axis=(1, 2))) > 1e-5)
    # All-zero mask == no condition at all (the shared null vector, no condition tokens).
    dropped = apply(params, ids, t, cond, jnp.zeros_like(mask))
    unconditional = apply(params, ids, t)
    np.testing.assert_allclose(dropped, unconditional, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ remat, bf16


def _dit(**kw) -> DiT:
    cfg = dict(
        input_size=(4, 4),
        in_channels=2,
        patch_size=2,
        hidden_size=16,
        depth=2,
        num_heads=2,
        cond_vocab_size=CV,
        cond_len=CL,
    )
    return DiT(**{**cfg, **kw})


def _dit_args(seed=0):
    _, t, cond, mask = _token_inputs(seed)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((B, 4, 4, 2)), jnp.float32)
    return x, t, cond, mask


def test_remat_gives_the_same_gradients(token_setup):
    _, boxed, _ = token_setup
    inputs = _token_inputs()
    params = _perturbed(nn.meta.unbox(boxed))

    def grads(model):
        loss = lambda p: jnp.sum(jnp.sin(model.apply(p, *inputs)))
        return jax.jit(jax.grad(loss))(params)

    want, got = grads(_token_dit()), grads(_token_dit(remat=True))
    # Float32 rounding only: remat recomputes the forward inside other fusions (1.3e-5 relative
    # seen on an AMX Xeon, where XLA:CPU picks other kernels); a wrong remat is off by O(1).
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5), got, want)


@pytest.mark.parametrize(
    "make, args", [(_token_dit, _token_inputs), (_dit, _dit_args)], ids=["token_dit", "dit"]
)
def test_remat_keeps_parameter_names(make, args):
    # DiT and TokenDiT build their blocks with the same make_blocks: same checkpoints either way.
    inputs = args()
    plain = jax.eval_shape(make().init, _key(0), *inputs)
    remat = jax.eval_shape(make(remat=True).init, _key(0), *inputs)
    assert jax.tree.structure(remat) == jax.tree.structure(plain)


def _dot_operands(fn, *args) -> list[tuple[tuple[int, ...], jnp.dtype]]:
    """(shape, dtype) of every dot_general operand in fn's jaxpr, nested jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.extend((v.aval.shape, v.aval.dtype) for v in eqn.invars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize(
    "make, args", [(_token_dit, _token_inputs), (_dit, _dit_args)], ids=["token_dit", "dit"]
)
def test_bf16_computes_in_bf16_with_f32_params(make, args):
    inputs = args()
    model = make(dtype=jnp.bfloat16)
    boxed = jax.eval_shape(model.init, _key(0), *inputs)
    params = nn.meta.unbox(boxed)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(model.apply, params, *inputs)
    assert out.dtype == jnp.float32
    operands = _dot_operands(lambda p: model.apply(p, *inputs), params)
    # Every matmul is bf16 except the condition's masked mean (pooled in f32 on purpose).
    f32 = [(shape, dt) for shape, dt in operands if dt != jnp.bfloat16]
    assert len(operands) > 10 * len(f32)
    assert f32 == [((B, CL, 16), jnp.float32), ((B, CL), jnp.float32)], f32


def test_bf16_outputs_close_to_f32(token_setup):
    _, boxed, apply = token_setup
    inputs = _token_inputs()
    params = _perturbed(nn.meta.unbox(boxed), scale=0.05)
    want = apply(params, *inputs)
    got = jax.jit(_token_dit(dtype=jnp.bfloat16).apply)(params, *inputs)
    assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
    scale = float(jnp.abs(want).max())
    assert scale > 1e-3
    np.testing.assert_allclose(got, want, atol=0.05 * scale)
