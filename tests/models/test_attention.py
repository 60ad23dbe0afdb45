"""The attention table: every entry computes the same attention (values and gradients), the
blocked one without the [T, S] score matrix, splash (in Pallas interpret mode) padded, masked and
sharded, "auto"'s choice per platform, and the DiT runs with each."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.models import attention, splash_attention
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.training import sharding


def _qkv_mask(t=37, s=45, b=2, n=3, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, length, n, h)), jnp.float32) for length in (t, s, s))
    keep = rng.random((b, s)) > 0.3
    keep[:, 0] = True  # every query has a key
    return q, k, v, jnp.asarray(keep)[:, None, None, :]


@pytest.mark.parametrize("impl", ["einsum", "blocked"])
def test_every_attention_equals_xlas_values_and_gradients(impl):
    def blocked(q, k, v, m):  # 45 keys in blocks of 8: 6 blocks, the last one padded
        return attention.blocked_attention(q, k, v, m, block=8)

    fn = blocked if impl == "blocked" else attention.ATTENTION[impl]
    q, k, v, mask = _qkv_mask()
    for m in (mask, None):
        np.testing.assert_allclose(
            fn(q, k, v, m), attention.xla_attention(q, k, v, m), rtol=1e-5, atol=2e-6
        )

        def loss(f, m=m):
            return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, m)))

        want = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
        got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_masked_key_gets_no_weight_in_blocked_attention():
    q, k, v, mask = _qkv_mask()
    out = attention.blocked_attention(q, k, v, mask, block=8)
    v_changed = jnp.where(mask[:, 0, 0, :, None, None], v, 1e6)  # masked keys' values changed
    np.testing.assert_array_equal(out, attention.blocked_attention(q, k, v_changed, mask, block=8))


def test_blocked_attention_memory_grows_linearly_with_the_sequence():
    """XLA's temporaries of forward + backward hold [T, S] scores and grow ~4x when the sequence
    doubles; the blocked kernel's hold a few [T, block] blocks and grow ~2x."""

    def temp_bytes(fn, t, h=16):
        x = jnp.zeros((1, t, 1, h))
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, None)), argnums=(0, 1, 2)))
        return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    def blocked(q, k, v, m):
        return attention.blocked_attention(q, k, v, m, block=256)

    xla = [temp_bytes(attention.xla_attention, t) for t in (1024, 2048)]
    ours = [temp_bytes(blocked, t) for t in (1024, 2048)]
    assert xla[0] >= 1024 * 1024 * 4 and xla[1] / xla[0] > 3.5
    assert ours[1] / ours[0] < 2.5 and ours[1] < xla[1] / 4


def _splash(q, k, v, m):
    return splash_attention.splash_attention(q, k, v, m, interpret=True)


def _assert_same_values_and_gradients(fn, q, k, v, m, rtol=1e-5, atol=2e-6):
    np.testing.assert_allclose(fn(q, k, v, m), attention.xla_attention(q, k, v, m), rtol, atol)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, m)))

    want = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize(
    "case",
    [
        # DiT-S's head dim 64 (padded to 128); 16 image tokens attend to a 9-token caption
        # (padded to a block of 128), some of its tokens masked out.
        dict(t=16, s=9, h=64, masked=True),
        dict(t=20, s=20, h=64, masked=False),  # self-attention, no mask
        # 140 keys in blocks of 128: two key blocks, the second one padded; head dim 8.
        dict(t=7, s=140, h=8, masked=True, max_block=128),
    ],
    ids=["cross_attention_caption", "self_attention", "two_key_blocks"],
)
def test_splash_attention_equals_xlas_values_and_gradients(case, monkeypatch):
    monkeypatch.setattr(splash_attention, "MAX_BLOCK", case.get("max_block", 512))
    q, k, v, mask = _qkv_mask(t=case["t"], s=case["s"], n=2, h=case["h"])
    _assert_same_values_and_gradients(_splash, q, k, v, mask if case["masked"] else None)


def test_splash_attention_is_finite_for_an_example_with_every_key_masked():
    """conditioning.py discards such a row (a dropped condition): it must not be NaN."""
    q, k, v, mask = _qkv_mask(t=4, s=9, n=1, h=8)
    mask = mask.at[1].set(False)
    out = _splash(q, k, v, mask)
    grads = jax.grad(lambda q, k, v: jnp.sum(_splash(q, k, v, mask)[:1]), (0, 1, 2))(q, k, v)
    assert all(bool(jnp.isfinite(a).all()) for a in (out, *grads))


def test_splash_attention_refuses_a_per_query_mask_and_runs_off_tpu_only_interpreted():
    q, k, v, _ = _qkv_mask(t=4, s=6, n=1, h=8)
    with pytest.raises(ValueError, match="key-padding mask"):
        _splash(q, k, v, jnp.ones((2, 1, 4, 6), bool))
    with pytest.raises(ValueError, match="TPU kernel"):
        splash_attention.splash_attention(q, k, v)


@pytest.mark.parametrize("axis", ["data", "tensor"])
def test_sharded_splash_attention_equals_the_unsharded_one(axis):
    """2 devices splitting the batch (data) or the heads (tensor): the kernel runs per shard in
    shard_map and gives the unsharded values and gradients."""
    q, k, v, mask = _qkv_mask(t=8, s=9, n=2, h=8)
    mesh = sharding.make_mesh({axis: 2}, jax.devices()[:2])

    def value_and_grads(q, k, v):
        return jax.value_and_grad(
            lambda q, k, v: jnp.sum(jnp.sin(_splash(q, k, v, mask))), argnums=(0, 1, 2)
        )(q, k, v)

    want = jax.jit(value_and_grads)(q, k, v)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        spec = jax.P("data", None, None, None) if axis == "data" else jax.P(None, None, "tensor")
        args = [jax.device_put(a, jax.NamedSharding(mesh, spec)) for a in (q, k, v)]
        assert "shard_map" in str(jax.make_jaxpr(value_and_grads)(*args))
        got = jax.jit(value_and_grads)(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cudnn_inputs_are_bf16_padded_to_even_lengths_and_keep_the_attention():
    q, k, v, mask = _qkv_mask(t=7, s=9, n=2, h=8)
    q_c, k_c, v_c, m = attention.cudnn_inputs(q, k, v, mask)
    assert q_c.dtype == k_c.dtype == v_c.dtype == jnp.bfloat16
    assert q_c.shape == (2, 8, 2, 8) and k_c.shape == v_c.shape == (2, 10, 2, 8)
    assert m.shape == (2, 1, 8, 10) and not m[:, :, :7, 9].any()  # the padded key
    out = attention.xla_attention(q_c, k_c, v_c, m)[:, :7].astype(jnp.float32)
    want = attention.xla_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), mask)
    np.testing.assert_allclose(out, want.astype(jnp.float32), rtol=1e-2, atol=1e-2)
    assert attention.cudnn_inputs(q, k, v)[3] is None  # no mask: no padding either


H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    "platform, kind, head_dim, dtype, mask_form, want, why",
    [
        ("gpu", H100, 64, jnp.bfloat16, "key_padding", "cudnn", ""),
        ("gpu", H100, 72, jnp.bfloat16, "none", "cudnn", ""),  # DiT-XL: 1152 / 16
        ("gpu", H100, 36, jnp.bfloat16, "none", "xla", "multiple of 8"),
        ("gpu", H100, 64, jnp.float32, "none", "xla", "bfloat16"),
        ("gpu", H100, 256, jnp.bfloat16, "none", "cudnn", ""),  # Hopper: up to 256
        ("gpu", "NVIDIA A100-SXM4-80GB", 256, jnp.bfloat16, "none", "xla", "at most 128"),
        ("gpu", "AMD Instinct MI300X", 64, jnp.bfloat16, "none", "xla", "NVIDIA"),
        ("tpu", "TPU v5 lite", 64, jnp.float32, "key_padding", "splash", ""),
        ("tpu", "TPU7x", 72, jnp.bfloat16, "none", "splash", ""),
        ("tpu", "TPU v4", 64, jnp.bfloat16, "general", "xla", "key-padding"),
        ("tpu", "TPU v3", 64, jnp.bfloat16, "none", "xla", "TPU v4 or newer"),
        ("cpu", "cpu", 64, jnp.float32, "key_padding", attention.CPU_ATTENTION, ""),
    ],
)
def test_select_attention_per_platform(platform, kind, head_dim, dtype, mask_form, want, why):
    impl, reason = attention.select_attention(
        platform, kind, (2, 16, 6, head_dim), dtype, mask_form
    )
    assert impl == want and impl in attention.ATTENTION
    assert (why in reason) if why else reason == ""


def test_key_mask_forms():
    assert attention.key_mask_form(None) == "none"
    assert attention.key_mask_form(jnp.ones((2, 1, 1, 9), bool)) == "key_padding"
    assert attention.key_mask_form(jnp.ones((9,), bool)) == "key_padding"
    assert attention.key_mask_form(jnp.ones((2, 1, 4, 9), bool)) == "general"
    assert attention.key_mask_form(jnp.ones((1, 3, 1, 9), bool)) == "general"


def test_select_attention_gives_up_cudnn_when_the_queries_are_split():
    impl, reason = attention.select_attention(
        "gpu", H100, (2, 16, 6, 64), jnp.bfloat16, queries_split=True
    )
    assert impl == "xla" and "query sequence" in reason


def test_auto_attention_runs_the_selection_and_logs_a_fallback_once(monkeypatch, caplog):
    q, k, v, mask = _qkv_mask(t=5, s=6, n=1, h=8)  # float32: no cuDNN
    np.testing.assert_array_equal(  # on this CPU: the CPU entry, nothing logged
        attention.attend(q, k, v, mask, impl="auto"),
        attention.ATTENTION[attention.CPU_ATTENTION](q, k, v, mask),
    )
    monkeypatch.setattr(attention, "_device", lambda: ("gpu", H100, "9.0"))
    monkeypatch.setattr(attention, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="crossmodal_jax"):
        for _ in range(3):
            out = attention.attend(q, k, v, mask, impl="auto")
    np.testing.assert_array_equal(out, attention.xla_attention(q, k, v, mask))
    lines = [r.getMessage() for r in caplog.records if "attention 'auto'" in r.getMessage()]
    assert len(lines) == 1 and "bfloat16" in lines[0] and "'xla'" in lines[0], lines


def test_the_dit_gives_the_same_output_with_every_attention(monkeypatch):
    monkeypatch.setattr(splash_attention, "INTERPRET", True)
    args = (
        jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32),
        jnp.array([3.0, 500.0]),
        jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]], jnp.int32),
        jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.int32),
    )
    outs = {}
    for impl in attention.ATTENTION:
        if impl == "cudnn" and jax.devices()[0].platform != "gpu":
            continue
        model = DiT(
            (8, 8),
            4,
            patch_size=2,
            hidden_size=16,
            depth=2,
            num_heads=2,
            cond_len=4,
            attention=impl,
        )
        params = model.init(jax.random.key(0), *args)
        # adaLN-Zero blocks are the identity at init: perturb every weight so attention matters.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = tree.unflatten(
            [
                p + 0.05 * jax.random.normal(key, p.shape)
                for p, key in zip(leaves, keys, strict=True)
            ]
        )
        outs[impl] = model.apply(params, *args)
    for impl in outs:
        np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-4, atol=1e-5)
