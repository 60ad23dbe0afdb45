"""The attention table: every entry computes the same attention (values and gradients), the
blocked one without the [T, S] score matrix, and the DiT runs with each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.models import attention
from crossmodal_jax.models.dit import DiT


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


def test_the_dit_gives_the_same_output_with_every_attention():
    args = (
        jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32),
        jnp.array([3.0, 500.0]),
        jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]], jnp.int32),
        jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.int32),
    )
    outs = {}
    for impl in attention.ATTENTION:
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
    for impl in ("einsum", "blocked"):
        np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-4, atol=1e-5)
