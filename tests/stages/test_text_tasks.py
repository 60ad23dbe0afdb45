"""X→text pieces without training: caption metrics, vector conditions, task/config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages.objectives import TOKENIZER_CODES, source_code_ids, vq_tokens, vq_vectors


def _token_dit(feature_dim, pool_hidden=0):
    return TokenDiT(
        cond_pool_hidden=pool_hidden,
        seq_len=5,
        vocab_size=9,
        hidden_size=16,
        depth=1,
        num_heads=2,
        cond_vocab_size=7,
        cond_len=4,
        cond_feature_dim=feature_dim,
    )


@pytest.mark.parametrize("pool_hidden", [0, 6])
def test_vector_conditions_are_projected_and_masked_like_ids(pool_hidden):
    model = _token_dit(3, pool_hidden)
    ids = jnp.zeros((2, 5), jnp.int32)
    t = jnp.ones((2,))
    cond = jax.random.normal(jax.random.key(0), (2, 4, 3))
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    params = nn.meta.unbox(model.init(jax.random.key(1), ids, t, cond, mask))
    assert "feature_proj" in params["params"]["cond_embed"]
    assert "token_embed" not in params["params"]["cond_embed"]
    hidden = params["params"]["cond_embed"].get("pool_hidden")
    assert (hidden is None) == (pool_hidden == 0)  # an MLP over all 4 x 3 features, or linear
    assert hidden is None or hidden["kernel"].shape == (12, pool_hidden)
    # Make the (zero-initialised) output head non-trivial so the outputs show the condition.
    params = jax.tree.map(lambda p: p + 0.1, params)
    out = model.apply(params, ids, t, cond, mask)
    assert out.shape == (2, 5, 9)
    hidden_changed = cond.at[0, 3].set(5.0)  # a masked position of example 0
    np.testing.assert_allclose(model.apply(params, ids, t, hidden_changed, mask), out, atol=1e-6)
    visible_changed = cond.at[0, 0].set(5.0)
    assert not np.allclose(model.apply(params, ids, t, visible_changed, mask)[0], out[0])
    # No condition at all uses the null vector, whatever the feature width.
    assert model.apply(params, ids, t).shape == (2, 5, 9)


def test_condition_dropout_acts_in_training_only():
    model, plain = _token_dit(3, 6), _token_dit(3, 6)
    model = model.clone(cond_dropout=0.5)
    ids, t = jnp.zeros((2, 5), jnp.int32), jnp.ones((2,))
    cond = jax.random.normal(jax.random.key(0), (2, 4, 3))
    params = nn.meta.unbox(plain.init(jax.random.key(1), ids, t, cond))
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero output head
    out = plain.apply(params, ids, t, cond)
    np.testing.assert_array_equal(model.apply(params, ids, t, cond), out)  # same parameters
    rngs = {"dropout": jax.random.key(2)}
    dropped = model.apply(params, ids, t, cond, train=True, rngs=rngs)
    assert not np.allclose(dropped, out)
    np.testing.assert_array_equal(model.apply(params, ids, t, cond, train=True, rngs=rngs), dropped)
    np.testing.assert_array_equal(plain.apply(params, ids, t, cond, train=True, rngs=rngs), out)


@pytest.mark.parametrize("make", [vq_vectors, vq_tokens])
def test_precomputed_code_ids_give_the_condition_of_encoding_in_the_step(make):
    tokenizer = VQVAE(channels=4, channel_mult=(1, 2), code_dim=3, num_codes=16)
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1), minval=-1.0, maxval=1.0)
    variables = tokenizer.init(
        {"params": jax.random.key(1), "vq": jax.random.key(2)}, x, train=False
    )
    model_state = {"tokenizer": nn.meta.unbox(variables)}
    patch = (2, 2) if make is vq_vectors else ()
    condition = make(tokenizer, "image", patch)
    in_step, mask = condition(model_state, {"image": x})
    ids = source_code_ids(tokenizer, model_state["tokenizer"], x)
    assert ids.shape == (3, 4, 4) and ids.dtype == jnp.int32
    cached, cached_mask = condition(model_state, {TOKENIZER_CODES: ids})  # no source in the batch
    np.testing.assert_allclose(cached, in_step, atol=1e-6)
    np.testing.assert_array_equal(cached_mask, mask)


@pytest.mark.parametrize(
    "grid, patch, pattern",
    [
        ((20, 4), (1, 4), "b (h p1) (w p2) d -> b (h w) (p1 p2 d)"),
        ((4, 4), (2, 2), "b (h p1) (w p2) d -> b (h w) (p1 p2 d)"),
        ((2, 8, 8), (2, 1, 1), "b (t p0) (h p1) (w p2) d -> b (t h w) (p0 p1 p2 d)"),
    ],
)
def test_group_codes_is_an_n_d_patchify(grid, patch, pattern):
    import einops

    from crossmodal_jax.models.condition_stem import group_codes

    z = np.random.default_rng(0).normal(size=(2, *grid, 3)).astype(np.float32)
    names = ("p1", "p2") if len(grid) == 2 else ("p0", "p1", "p2")
    sizes = dict(zip(names, patch, strict=True))
    expected = einops.rearrange(z, pattern, **sizes)
    np.testing.assert_array_equal(np.asarray(group_codes(jnp.asarray(z), patch)), expected)
    assert group_codes(jnp.asarray(z), ()).shape == (2, int(np.prod(grid)), 3)
