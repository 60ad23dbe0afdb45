"""End-padded audio's mask through the stages (stages/source_mask.py): downsampled right at the
edges, moved with the sources and codes it belongs to, and nothing in a clip's padded frames reaches
the tokenizer's loss, the precomputed codes, the X→text DiT's logits, its loss or its captions.

The generator is configs/librispeech_s2t.py:smoke's (tfds's mock LibriSpeech: nothing prepared),
its tokenizer and DiT freshly initialised: the property holds for any weights.
"""

import importlib.util
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import builders, generators, precompute, source_mask, tokenizer
from crossmodal_jax.stages.augment import code_shift, source_shift
from crossmodal_jax.stages.objectives import TOKENIZER_CODES, TOKENIZER_CODES_MASK
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import RunContext, abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer

pytest.importorskip("tensorflow_datasets")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(arg="smoke"):
    path = os.path.join(ROOT, "configs", "librispeech_s2t.py")
    spec = importlib.util.spec_from_file_location("librispeech_s2t", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ---------------------------------------------------------------------------- the mask's shapes


@pytest.mark.parametrize("valid", [0, 1, 7, 8, 9, 63, 64])
def test_a_code_holds_sound_when_any_of_its_frames_does(valid):
    frames, grid, stride = 64, (8, 2), 8
    frame_mask = (np.arange(frames) < max(valid, 0))[None].astype(np.int32)
    codes = np.asarray(source_mask.code_mask(frame_mask, grid))
    expected_codes = math.ceil(valid / stride)  # a partly filled code counts: its sound is read
    assert codes.shape == (1, *grid)
    assert (codes[0, :, 0] == codes[0, :, 1]).all()  # the same on every mel code
    assert codes[0, :, 0].tolist() == [1] * expected_codes + [0] * (8 - expected_codes)
    # Tokens of one time step (cond_patch (1, 2)): one per time code; of two (2, 1): ceil again.
    assert np.asarray(source_mask.token_mask(codes, (1, 2)))[0].sum() == expected_codes
    pairs = np.asarray(source_mask.token_mask(codes, (2, 1)))[0].reshape(4, 2)
    assert pairs[:, 0].sum() == math.ceil(expected_codes / 2)
    np.testing.assert_array_equal(source_mask.host_code_mask(frame_mask, grid), codes)
    with pytest.raises(ValueError, match="cannot be downsampled"):
        source_mask.downsample_mask(frame_mask, 7)


def test_the_masks_move_with_the_sources_and_codes_they_belong_to():
    key = jax.random.key(3)
    # Spectrogram frames numbered by time; the first `n` hold sound.
    b, frames, mels = 6, 16, 4
    valid = jnp.asarray([16, 1, 5, 9, 12, 3])
    x = jnp.broadcast_to(
        jnp.arange(frames, dtype=jnp.float32)[None, :, None, None], (b, frames, mels, 1)
    )
    frame_mask = (jnp.arange(frames)[None] < valid[:, None]).astype(jnp.int32)
    moved = source_shift("audio", (3, 1), fill=-1.0)({"audio": x, "audio_mask": frame_mask}, key)
    t = moved["audio"].max(axis=(2, 3))  # the original frame each position now shows, -1 if none
    expected = ((t >= 0) & (t < valid[:, None])).astype(jnp.int32)
    np.testing.assert_array_equal(moved["audio_mask"], expected)
    assert int(jnp.sum(moved["audio_mask"] != frame_mask)) > 0  # something moved

    # Code ids numbered by time step; their mask rides along as the edge-repeated grid does.
    ids = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32)[None, :, None], (b, 8, 2))
    masks = (ids < valid[:, None, None] // 2).astype(jnp.int32)
    out = code_shift(TOKENIZER_CODES, (2, 0))(
        {TOKENIZER_CODES: ids, TOKENIZER_CODES_MASK: masks}, key
    )
    assert (
        out[TOKENIZER_CODES].shape == ids.shape and out[TOKENIZER_CODES_MASK].dtype == masks.dtype
    )
    expected = (out[TOKENIZER_CODES] < valid[:, None, None] // 2).astype(jnp.int32)
    np.testing.assert_array_equal(out[TOKENIZER_CODES_MASK], expected)
    plain = code_shift(TOKENIZER_CODES, (2, 0))({TOKENIZER_CODES: ids}, key)
    np.testing.assert_array_equal(plain[TOKENIZER_CODES], out[TOKENIZER_CODES])  # ids as before


def test_what_cannot_keep_the_padding_out_is_refused_in_one_line():
    config = _config()
    source_mask.check_padded_source(config)
    for key, value in [
        ("generator.model.cond_conv", (8,)),
        ("generator.source_affine", (5.0, 0.0)),
        ("tokenizer.adversarial.weight", 0.1),
    ]:
        bad = _config()
        *path, name = key.split(".")
        block = bad
        for part in path:
            block = block[part]
        block[name] = value
        with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
            source_mask.check_padded_source(bad)
        assert len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------- nothing leaks from the padding


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory):
    """The smoke's experiment, fresh tokenizer and generator states, and a batch of four clips
    holding sound in all, 1, 17 and 100 of their 256 frames."""
    tmp_path = tmp_path_factory.mktemp("padded")
    config = _config()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = sharding.rules_from_config(config.mesh.rules)
    ctx = RunContext(workdir=str(tmp_path / "run"), mesh=mesh, rules=rules, seed=0)
    exp = Experiment.build(config, ctx)
    frames = exp.input_shape[0]
    rng = np.random.default_rng(0)
    valid = np.asarray([frames, 1, 17, 100])
    frame_mask = (np.arange(frames)[None] < valid[:, None]).astype(np.int32)
    x = rng.uniform(-1, 1, (4, *exp.input_shape)).astype(np.float32)
    x = source_mask.host_canonical(x, frame_mask)  # as the features give it
    garbage = np.where(frame_mask[..., None, None] == 1, x, rng.normal(0, 5, x.shape)).astype(
        np.float32
    )
    text = rng.integers(3, 200, (4, config.data.text_max_len)).astype(np.int32)
    batch = {"audio": x, "audio_mask": frame_mask, "text": text, "text_mask": np.ones_like(text)}
    with jax.set_mesh(mesh), nn.logical_axis_rules(ctx.rules):
        states = {}
        for name, make in [
            ("tokenizer", tokenizer.tokenizer_stage),
            ("generator", generators.generator_stage),  # on the fresh tokenizer
        ]:
            spec = make(exp)
            optimizer = make_optimizer(spec.train_cfg)[0]
            init_fn, _, _ = abstract_state(spec, optimizer, jax.random.key(1), ctx)
            state = fresh_state(spec, init_fn, jax.random.key(1))
            if name == "generator":  # at init the DiT's logits are all zero: nothing to compare
                state = state.replace(
                    params=_jitter(state.params), ema_params=_jitter(state.params)
                )
            states[name] = (spec, state)
            exp.results[name] = state
        yield exp, states, batch, {**batch, "audio": garbage}


def _jitter(params):
    """Params with every zero-initialised gate and head opened a little."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [
        p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def _loss(spec, state, batch, seed=0):
    objective = jax.jit(spec.objective)  # compiled once a batch layout (jit caches by function)
    loss, (_, metrics) = objective(state.params, state.model_state, batch, jax.random.key(seed))
    return float(loss), {k: float(v) for k, v in metrics.items()}


def test_the_tokenizer_loss_counts_only_the_frames_that_hold_sound(padded_run):
    exp, states, batch, garbage = padded_run
    spec, state = states["tokenizer"]
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        loss, metrics = _loss(spec, state, batch)
        assert (loss, metrics) == _loss(spec, state, garbage)
        # The logged MSE is the mean over the sounding frames of each clip, then over clips.
        variables = {"params": state.params, **state.model_state}
        reconstruct = jax.jit(lambda v, x: exp.tokenizer.apply(v, x, train=False)[0])
        rec = reconstruct(variables, jnp.asarray(batch["audio"]))
        sq = np.square(np.asarray(rec) - batch["audio"]).mean(axis=(2, 3))
        m = batch["audio_mask"]
        np.testing.assert_allclose(
            metrics["recon_mse"], np.mean((sq * m).sum(1) / m.sum(1)), rtol=1e-4
        )
        unmasked = {k: v for k, v in garbage.items() if k != "audio_mask"}
        assert _loss(spec, state, unmasked)[0] != loss  # without the mask the garbage counts


def test_padding_reaches_no_logit_loss_code_or_caption_of_the_text_generator(padded_run):
    exp, states, batch, garbage = padded_run
    spec, state = states["generator"]
    params, model_state = state.ema_params, state.model_state
    condition = builders.source_condition(exp)
    dit = builders.build_token_dit(exp)
    text = jnp.asarray(batch["text"])
    t = jnp.full((4,), 500.0)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):

        @jax.jit
        def forward(b):
            cond, mask = condition(model_state, b)
            return dit.apply({"params": params}, text, t, cond, mask), mask

        def logits(b):
            out, mask = forward({k: jnp.asarray(v) for k, v in b.items()})
            return np.asarray(out), np.asarray(mask)

        clean, mask = logits(batch)
        np.testing.assert_array_equal(clean, logits(garbage)[0])
        # Token i holds sound up to ceil(valid / 8) (the time stride): 32, 1, 3, 13 tokens.
        assert mask.sum(axis=1).tolist() == [32, 1, 3, 13]
        # Controls: without the mask the padding is read; values where there is sound are read.
        no_mask = {k: v for k, v in garbage.items() if k != "audio_mask"}
        assert not np.array_equal(clean, logits(no_mask)[0])
        louder = {
            **batch,
            "audio": np.where(batch["audio_mask"][..., None, None] == 1, 0.5, batch["audio"]),
        }
        assert not np.array_equal(clean[1:], logits(louder)[0][1:])

        # The loss: from the sources, and from the precomputed codes and their mask.
        assert _loss(spec, state, batch) == _loss(spec, state, garbage)
        convert = precompute.codes_converter(exp, exp.tokenizer)
        coded, coded_garbage = convert(batch), convert(garbage)
        assert coded.keys() == {TOKENIZER_CODES, TOKENIZER_CODES_MASK, "text", "text_mask"}
        for k in coded:
            np.testing.assert_array_equal(coded[k], coded_garbage[k])
        np.testing.assert_allclose(
            _loss(spec, state, coded)[0], _loss(spec, state, batch)[0], rtol=1e-5
        )

        # The captions the sampler writes (summaries, evaluation and the sample CLI).
        generate = generators.sampler(exp)
        key = jax.random.key(5)
        np.testing.assert_array_equal(
            generate(params, model_state, batch["audio"], key, batch["audio_mask"]),
            generate(params, model_state, garbage["audio"], key, garbage["audio_mask"]),
        )
