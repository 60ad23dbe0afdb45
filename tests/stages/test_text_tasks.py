"""X→text pieces without training: caption metrics, vector conditions, task/config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from crossmodal_jax import tasks
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError
from crossmodal_jax.evaluation.text_metrics import digit_naming_accuracy, named_digits, text_metrics
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.run import build_experiment
from crossmodal_jax.stages.generators import processes_for
from crossmodal_jax.stages.objectives import SOURCE_CODES, source_code_ids, vq_tokens, vq_vectors


def test_text_metrics_match_their_definitions():
    perfect = text_metrics(["the digit five moves up"], [["the digit five moves up"]])
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["wer"] == 0.0 and perfect["cer"] == 0.0 and perfect["exact_match"] == 1.0
    assert perfect["rougeL"] == pytest.approx(1.0)
    # One substituted word of four: WER 1/4; exact match 0; spacing and case are normalised.
    m = text_metrics(["Seven  one two three"], [["seven one two four"]])
    assert m["wer"] == pytest.approx(0.25) and m["exact_match"] == 0.0
    # Several references: the best one counts.
    m = text_metrics(["a handwritten five"], [["the digit five", "a handwritten five"]])
    assert m["exact_match"] == 1.0 and m["wer"] == 0.0
    with pytest.raises(ValueError, match="one reference list per hypothesis"):
        text_metrics(["a"], [])


def test_digit_naming_needs_exactly_the_right_digit():
    assert named_digits("the digit seven moves left") == [7]
    hyps = ["the digit seven", "the digit seven or one", "a handwritten sevn", "three"]
    assert digit_naming_accuracy(hyps, [7, 7, 7, 3]) == pytest.approx(0.5)


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
    cached, cached_mask = condition(model_state, {SOURCE_CODES: ids})  # no source in the batch
    np.testing.assert_allclose(cached, in_step, atol=1e-6)
    np.testing.assert_array_equal(cached_mask, mask)


def test_every_task_names_a_tokenizer_modality_and_a_process():
    for task in tasks.TASKS.values():
        assert task.continuous in MODALITIES
        assert processes_for(task.target)
    with pytest.raises(UserError, match="unknown task 'image2sound'"):
        tasks.get_task("image2sound")


def _config(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", f"configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


@pytest.mark.parametrize(
    "config_name, key, value, message",
    [
        ("img2txt", "generator.diffusion.process", "gaussian", "cannot generate text"),
        ("img2txt", "data.name", "moving_digits", "needs a dataset of images"),
        ("video2txt", "generator.diffusion.schedule", "cubic", "unknown masking schedule"),
        ("img2txt", "generator.model.cond_input", "pixels", "unknown condition input"),
        ("video2txt", "tokenizer.model.strides", ((2, 2, 2),), "tokenizer.model"),
        (
            "img2txt",
            "generator.model.cond_patch",
            (3, 1),
            "cond_patch=.3, 1. must have one divisor",
        ),
        ("img2txt", "generator.source_shift", (1, 1, 1), "source_shift=.1, 1, 1. needs 2 entries"),
        ("img2txt", "data.text_words", "one two one", "data.text_words: text vocabulary has rep"),
        ("speech2txt", "generator.diffusion.word_mask_prob", 0.5, "each token is already a word"),
        ("img2txt", "generator.code_shift", (1, 1), "code_shift needs generator.precompute_codes"),
        ("speech2txt", "generator.source_shift", (8, 0), "use generator.code_shift .in codes."),
        ("speech2txt", "generator.code_shift", (1, 0, 0), "needs 2 non-negative entries"),
        ("img2txt", "generator.source_affine", (10.0,), "must be .largest angle in degrees"),
        ("video2txt", "generator.source_affine", (10.0, 0.1), "source_affine warps sources"),
        ("video2txt", "generator.model.cond_conv_kernel", (3, 3), "needs 3 sizes >= 1, one per"),
        ("img2txt", "generator.model.cond_conv", (8, 0), "cond_conv=.8, 0. needs widths >= 1"),
        ("img2txt", "generator.model.cond_conv_stride", (2, 2), "cond_conv_stride needs generat"),
    ],
)
def test_impossible_text_task_configs_are_one_line(tmp_path, config_name, key, value, message):
    config = _config(config_name)
    config.data.data_dir = str(tmp_path / "data")
    section, _, field = key.rpartition(".")
    node = config
    for part in section.split("."):
        node = node[part]
    with node.ignore_type():
        node[field] = value
    with pytest.raises(UserError, match=message) as err:
        build_experiment(config, str(tmp_path / "run"))
    assert "\n" not in str(err.value)


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
