"""The DiT's conditioning variants (models/conditioning.py): cross-attention and MMDiT blocks are
the identity at init, padded condition positions change nothing, the condition's weights learn,
and both models run with every variant through the real builders. "in_context" is covered by
test_models.py and test_torch_dit.py (equal to PyTorch DiT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import img2txt, vqdit_img
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.models import CONDITIONINGS, CrossAttentionBlock, DiT, MMDiTBlock
from crossmodal_jax.stages import builders

B, L, D = 2, 5, 16
VARIANTS = ("cross_attention", "mmdit")
MASK = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)  # example 0 pads 3-4
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="unsafe_rbg")  # threefry compiles slowly on XLA:CPU


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def test_the_table_holds_the_three_variants():
    assert tuple(CONDITIONINGS) == ("in_context", "cross_attention", "mmdit")


def _compiled(fn, *args):
    """fn jitted for these args with XLA:CPU's backend optimisations off: they cost about half
    of the compile time of programs this small and buy nothing at their sizes."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def test_blocks_are_the_identity_at_init_and_their_condition_weights_learn():
    x, c, cond = _normal((B, 7, D), 0), _normal((B, D), 1), _normal((B, L, D), 2)
    blocks = {
        "cross": CrossAttentionBlock(D, 2),
        "mmdit": MMDiTBlock(D, 2),
        "last": MMDiTBlock(D, 2, last=True),
    }

    def init(key):
        return {n: b.init(key, x, c, cond, MASK) for n, b in blocks.items()}

    def forward(params):  # the two MMDiT blocks chained, as a 2-deep MMDiT runs them
        cross = blocks["cross"].apply(params["cross"], x, c, cond, MASK)
        mm_x, mm_cond = blocks["mmdit"].apply(params["mmdit"], x, c, cond, MASK)
        last_x, last_cond = blocks["last"].apply(params["last"], mm_x, c, mm_cond, MASK)
        return cross, mm_x, mm_cond, last_x, last_cond

    def run(key, noise):  # one program: outputs at init, gradients once perturbed
        params = nn.meta.unbox(init(key))
        perturbed = jax.tree.map(jnp.add, params, noise)

        def loss(p):
            cross, _, _, last_x, _ = forward(p)
            return jnp.mean(cross**2) + jnp.mean(last_x**2)

        return forward(params), jax.grad(loss)(perturbed)

    shapes = nn.meta.unbox(jax.eval_shape(init, _key(0)))
    rng = np.random.default_rng(3)
    noise = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape, np.float32), shapes)
    at_init, grads = _compiled(run, _key(0), noise)(_key(0), noise)
    cross, mm_x, mm_cond, last_x, last_cond = at_init
    for out in (cross, mm_x, last_x):
        np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(mm_cond, cond)
    assert last_cond is None  # the last block drops the condition stream's outputs
    last = grads["last"]["params"]
    assert not {"c_query", "c_out", "c_mlp"} & set(last) and {"c_key", "c_value"} <= set(last)

    # The condition's weights get gradients: cross-attention's, and the condition stream's of
    # both MMDiT blocks (the first block's output and MLP reach the target only through the
    # last block's condition keys and values). Cross-attention's key bias is left out: it adds
    # the same q.b to a query's every logit, so softmax is blind to it (exactly zero gradient).
    condition = {
        name: float(jnp.abs(g).max())
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        if any(f"'{p}" in (name := jax.tree_util.keystr(path)) for p in ("cross_", "norm_c", "c_"))
        and not ("cross_key" in name and "bias" in name)
    }
    assert len(condition) == 31, sorted(condition)
    assert all(v > 0 for v in condition.values()), condition


def _dit(conditioning: str, **kw) -> DiT:
    return DiT(
        (4, 4), 3, patch_size=2, hidden_size=D, depth=2, num_heads=2, cond_vocab_size=11,
        cond_len=L, conditioning=conditioning, **kw,
    )  # fmt: skip


def _random_params(model: nn.Module, *args, seed: int = 1) -> dict:
    """Parameters of the model's shapes drawn in numpy (std 0.2): no init to compile, and every
    (otherwise zero-initialised) conditioning path is live."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(_key(0), *args)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape, np.float32), shapes)


@pytest.mark.parametrize("conditioning", VARIANTS)
def test_padded_condition_positions_change_nothing(conditioning):
    """Through the whole DiT: padded condition positions change nothing, visible ones do, and a
    dropped condition (all-zero mask) is unconditional. One compiled forward of stacked cases."""
    model = _dit(conditioning)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, 4, 4, 3), np.float32))
    t = jnp.asarray([3.0, 700.0])
    ids = jnp.asarray(rng.integers(0, 11, (B, L)), jnp.int32)
    params = _random_params(model, x, t, ids, MASK)
    padded = ids.at[0, 3:].set((ids[0, 3:] + 1) % 11)
    visible = ids.at[:, 0].set((ids[:, 0] + 1) % 11)
    dropped = jnp.zeros_like(MASK)
    # Along the batch axis: base, padded ids changed, a visible id changed, dropped, dropped
    # with other ids.
    cases = [(ids, MASK), (padded, MASK), (visible, MASK), (ids, dropped), (visible, dropped)]
    n = len(cases)

    def outputs(p):
        stacked = model.apply(
            p,
            jnp.tile(x, (n, 1, 1, 1)),
            jnp.tile(t, n),
            jnp.concatenate([i for i, _ in cases]),
            jnp.concatenate([m for _, m in cases]),
        )
        return stacked.reshape(n, *x.shape), model.apply(p, x, t)

    outs, uncond = _compiled(outputs, params)(params)
    base, pad, vis, drop, drop_other = outs
    np.testing.assert_array_equal(pad, base)
    assert np.all(np.asarray(jnp.abs(vis - base).max(axis=(1, 2, 3))) > 1e-5)
    np.testing.assert_array_equal(drop_other, drop)  # a dropped condition's ids do not matter
    np.testing.assert_allclose(uncond, drop, rtol=1e-5, atol=1e-5)  # and it is cond_ids=None


@pytest.mark.parametrize("conditioning", VARIANTS)
def test_both_models_take_every_variant_from_the_builders(conditioning):
    block_param = {"cross_attention": "cross_query", "mmdit": "c_key"}[conditioning]
    config = vqdit_img.get_config("smoke")
    config.generator.model.conditioning = conditioning
    exp = local_experiment(config)
    dit = builders.build_dit(exp)
    hwc = builders.latent_hwc(exp)
    t = jnp.full((2,), 10.0)
    cond_ids = jnp.ones((2, config.data.text_max_len), jnp.int32)
    out, variables = jax.eval_shape(
        lambda: dit.init_with_output(_key(0), jnp.ones((2, *hwc)), t, cond_ids)
    )
    assert dit.conditioning == conditioning and out.shape == (2, *hwc)
    assert block_param in variables["params"]["blocks_0"]

    config = img2txt.get_config("smoke")  # X→text: TokenDiT reading code vectors
    config.generator.model.update(conditioning=conditioning, remat=True)
    exp = local_experiment(config)
    token_dit = builders.build_token_dit(exp)
    assert token_dit.conditioning == conditioning and token_dit.remat
    ids = jnp.zeros((2, token_dit.seq_len), jnp.int32)
    cond = jnp.ones((2, *token_dit.cond_input_shape), jnp.float32)
    mask = jnp.ones(cond.shape[:2], jnp.float32).at[0, -1].set(0.0)
    params = _random_params(token_dit, ids, t, cond, mask)
    assert block_param in params["params"]["blocks_0"]
    # A real forward pass, rematerialised blocks included.
    logits = _compiled(token_dit.apply, params, ids, t, cond, mask)(params, ids, t, cond, mask)
    assert logits.shape == (2, token_dit.seq_len, token_dit.vocab_size)
    assert np.all(np.isfinite(logits)) and float(jnp.abs(logits).max()) > 0


@pytest.mark.parametrize("mean_pool", [False, True])
def test_condition_dropout_drops_features_in_training_only_with_either_pooling(mean_pool):
    from crossmodal_jax.models.dit import ConditionEmbedder

    def embedder(dropout):
        return ConditionEmbedder(
            vocab_size=8,
            max_len=L,
            hidden_size=D,
            feature_dim=3,
            dropout=dropout,
            mean_pool=mean_pool,
        )

    cond, mask = _normal((B, L, 3), 0), MASK
    params = embedder(0.0).init(_key(1), cond, mask)
    plain = embedder(0.0).apply(params, cond, mask)
    dropped = embedder(0.5)
    # Evaluation: dropout is off, the outputs are those of the same weights without it.
    for a, b in zip(dropped.apply(params, cond, mask), plain, strict=True):
        np.testing.assert_array_equal(a, b)
    # Training: features are dropped (and the rest scaled), so both outputs change.
    trained = dropped.apply(params, cond, mask, train=True, rngs={"dropout": _key(2)})
    for a, b in zip(trained, plain, strict=True):
        assert not np.allclose(a, b)
