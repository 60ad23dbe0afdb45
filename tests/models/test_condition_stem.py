"""The conv stem over a source's code grid (models/condition_stem.py) and the DiT reading it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from crossmodal_jax.models.condition_stem import ConditionStem, group_codes
from crossmodal_jax.models.token_dit import TokenDiT


def _pattern_at(grid, where, features=3):
    """A fixed 2x2 (x 2 in time) random pattern at `where` in a grid of zeros: [1, prod(grid), F]."""
    x = np.zeros((1, *grid, features), np.float32)
    blob = np.random.default_rng(0).normal(size=(2,) * len(grid) + (features,))
    x[(0, *(slice(w, w + 2) for w in where))] = blob
    return jnp.asarray(x.reshape(1, -1, features))


@pytest.mark.parametrize(
    "grid, patch, kernel, where, moved",
    [
        ((12, 12), (2, 2), 3, (4, 4), (6, 4)),  # an image's codes
        ((8, 12, 12), (2, 2, 2), (3, 3, 3), (3, 4, 4), (3, 6, 6)),  # a clip's: (2+1)-D convs
    ],
)
def test_the_summary_does_not_move_with_the_content_and_the_tokens_do(
    grid, patch, kernel, where, moved
):
    stem = ConditionStem(grid, (6, 5), kernel, patch)
    x = _pattern_at(grid, where)
    params = stem.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero biases: background is not zero
    tokens, summary = stem.apply(params, x)
    assert tokens.shape == (1, int(np.prod(grid)) // int(np.prod(patch)), int(np.prod(patch)) * 5)
    assert summary.shape == (1, 10)
    # Zero padding = zero background: while the pattern's reach (2 layers: 2 codes) stays off
    # the edges, where layer 2 sees padding instead of layer 1's background, the convs see the
    # same thing wherever the pattern is, so their max and mean over the grid are the same.
    tokens2, summary2 = stem.apply(params, _pattern_at(grid, moved))
    np.testing.assert_allclose(summary2, summary, rtol=1e-5, atol=1e-6)
    # The tokens moved with it: the pattern moved by whole patches, and the token that holds it
    # now sits where it went.
    token_grid = [g // p for g, p in zip(grid, patch, strict=True)]
    before = np.asarray(tokens).reshape(*token_grid, -1)
    after = np.asarray(tokens2).reshape(*token_grid, -1)
    at = tuple(w // p for w, p in zip(where, patch, strict=True))
    to = tuple(m // p for m, p in zip(moved, patch, strict=True))
    np.testing.assert_allclose(after[to], before[at], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[at], before[at])
    with pytest.raises(ValueError, match="do not fill the code grid"):
        stem.apply(params, x[:, :-1])


def test_a_strided_stem_reads_a_fine_grid_into_fewer_tokens():
    stem = ConditionStem((4, 8, 8), (6, 5), (1, 3, 3), patch=(4, 2, 2), stride=(1, 2, 2))
    assert stem.num_tokens == 4  # 4x8x8 -> 4x4x4 after the stride -> 1x2x2 patches
    x = jax.random.normal(jax.random.key(0), (2, 256, 3))
    tokens, summary = stem.apply(stem.init(jax.random.key(1), x), x)
    assert tokens.shape == (2, 4, 4 * 2 * 2 * 5) and summary.shape == (2, 10)


def test_group_codes_of_the_stem_is_the_identity_for_unit_patches():
    z = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    np.testing.assert_array_equal(group_codes(z, (1, 1)), z.reshape(2, 24, 3))


def _dit_with_stem():
    return TokenDiT(
        seq_len=5,
        vocab_size=9,
        hidden_size=16,
        depth=1,
        num_heads=2,
        cond_len=8,  # tokens after grouping the 4x8 grid by 2x2
        cond_feature_dim=3,
        cond_pool_hidden=6,
        cond_conv=(4,),
        cond_grid=(4, 8),
        cond_patch=(2, 2),
    )


def test_a_dit_reads_its_condition_through_the_stem_and_learns_it():
    model = _dit_with_stem()
    assert model.cond_input_shape == (32, 3)
    ids, t = jnp.zeros((2, 5), jnp.int32), jnp.ones((2,))
    cond = jax.random.normal(jax.random.key(0), (2, 32, 3))
    mask = jnp.ones((2, 32), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(1), ids, t, cond, mask))
    embed = params["params"]["cond_embed"]
    assert embed["pool_hidden"]["kernel"].shape == (8, 6)  # max + mean of 4 channels
    assert embed["feature_proj"]["kernel"].shape == (16, 16)  # 2x2 codes x 4 channels a token
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero output head shows the condition

    def loss(p, c):
        return jnp.sum(model.apply(p, ids, t, c, mask) ** 2)

    grads = jax.jit(jax.grad(loss))(params, cond)
    for leaf in jax.tree.leaves(grads["params"]["cond_stem"]):
        assert np.abs(np.asarray(leaf)).max() > 0  # the stem is trained through the DiT
    # A dropped condition (all-zero mask) is the unconditional model: null vector, no keys.
    dropped = mask.at[0].set(0)
    out = jax.jit(model.apply)(params, ids, t, cond, dropped)
    unconditional = jax.jit(model.apply)(params, ids, t)
    np.testing.assert_allclose(out[0], unconditional[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[1], unconditional[1])
