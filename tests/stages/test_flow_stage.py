"""The flow process as a generator stage: `configs/vqdit_img.py:smoke,flow` selects it, validation
names its bad choices, its objective (the shared step's `Objective`) scores the DiT over the frozen
tokenizer's latents, and its sampler draws images through the ODE and the tokenizer's decoder
(tiny dimensions, no CLI)."""

import importlib.util
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from crossmodal_jax.config import blocks, validation
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages import generators
from crossmodal_jax.stages.flow_sampler import flow_dit_fn, make_flow_image_generator
from crossmodal_jax.stages.objectives import TOKENIZER_CODES, flow_matching_objective
from crossmodal_jax.training import sharding


def _config(variant="smoke,flow"):
    spec = importlib.util.spec_from_file_location("cfg", "configs/vqdit_img.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_flow_variant_and_its_validation():
    config = _config()
    assert config.generator.diffusion.process == "flow"
    assert config.generator.sample.sampler == "heun"
    validation.check_names(config)
    for key, value, message in (
        ("sample.sampler", "rk4", r"unknown flow sampler 'rk4' \(generator.sample.sampler\)"),
        ("diffusion.time_sampling", "beta", r"\(generator.diffusion.time_sampling\); available"),
    ):
        bad = _config()
        block, field = key.split(".")
        bad.generator[block][field] = value
        with pytest.raises(UserError, match=message) as err:
            validation.check_names(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="masked and flow exclude each other"):
        _config("smoke,masked,flow")


def test_flow_objective_and_sampler_at_tiny_dimensions():
    """The stage's pieces: the flow objective over a frozen VQ-VAE's normalized latents, and the
    guided ODE sampler, whose latents the tokenizer snaps and decodes."""
    assert generators.GENERATORS[("flow", "image")].stage is generators.flow_image_stage
    assert "flow" in generators.processes_for("image")
    # RBG keys: threefry's initializers of every VQ-VAE and DiT parameter take ~10 s to compile
    # on CPU, RBG's a fraction of that; the values do not matter here.
    key = jax.random.key(0, impl="rbg")
    vqvae = VQVAE(in_channels=1, channels=8, channel_mult=(1,), code_dim=4, num_codes=16)
    images = jnp.zeros((8, 8, 8, 1))
    tok_vars = jax.jit(partial(vqvae.init, train=False))({"params": key, "vq": key}, images)
    dit = DiT(
        input_size=(8, 8), in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2,
        cond_vocab_size=300, cond_len=6,
    )  # fmt: skip
    text = jax.random.randint(key, (8, 6), 1, 300)
    text_mask = jnp.ones((8, 6), jnp.int32)
    x, t = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))
    params = nn.meta.unbox(jax.jit(dit.init)(key, x, t, text[:1]))["params"]

    # Precomputed code ids (generator.precompute_codes): their codebook vectors are the latents,
    # without compiling the encoder.
    codes = jax.random.randint(key, (8, 8, 8), 0, 16)
    z = np.asarray(vqvae.apply(tok_vars, codes, method=VQVAE.lookup))
    stats = {"mean": jnp.asarray(z.mean(axis=(0, 1, 2))), "std": jnp.float32(0.5)}
    model_state = {"tokenizer": tok_vars, "latents": stats}
    objective = flow_matching_objective(
        dit, vqvae, time_sampling="logit_normal", logit_mean=0.0, logit_std=1.0, cond_drop=0.5
    )
    batch = {TOKENIZER_CODES: codes, "text": text, "text_mask": text_mask}
    loss, (same_state, _) = jax.jit(objective)(params, model_state, batch, key)
    # adaLN-Zero: the DiT predicts v = 0 at init, so the loss is mean((eps - x0)^2) over the
    # normalized latents x0, whose expectation is 1 + mean(x0^2) (about 2 here; 1.25 unnormalized).
    x0 = (z - np.asarray(stats["mean"])) / 0.5
    np.testing.assert_allclose(float(loss), 1.0 + np.mean(x0**2), atol=0.15)
    assert jax.tree.structure(same_state) == jax.tree.structure(model_state)

    # Nonzero weights, so the sampler's velocities (and their guidance) are not all zero.
    flat, unravel = ravel_pytree(params)
    params = unravel(flat + 0.05 * jax.random.normal(key, flat.shape))
    sample_cfg = blocks.sample("flow", steps=3, guidance=2.0)  # Heun
    generate = make_flow_image_generator(dit, vqvae, sample_cfg, latent_hwc=(8, 8, 4))
    with jax.set_mesh(sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})):
        out = np.asarray(generate(params, model_state, text, text_mask, key))
        again = np.asarray(generate(params, model_state, text, text_mask, key))
    assert out.shape == (8, 8, 8, 1) and np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)
    np.testing.assert_array_equal(out, again)  # the ODE is deterministic given x_1


def test_flow_guidance_interval_guides_inside_and_is_conditional_outside():
    """Flow time t in (lo, hi]: classifier-free guidance; elsewhere the conditional velocity."""
    key = jax.random.key(1, impl="rbg")
    dit = DiT(
        input_size=(4, 4), in_channels=4, patch_size=2, hidden_size=16, depth=1, num_heads=2,
        cond_vocab_size=50, cond_len=3,
    )  # fmt: skip
    x = jax.random.normal(key, (4, 4, 4, 4))
    ids, mask = jax.random.randint(key, (4, 3), 1, 50), jnp.ones((4, 3), jnp.int32)
    params = nn.meta.unbox(dit.init(key, x[:1], jnp.zeros((1,)), ids[:1]))["params"]
    flat, unravel = ravel_pytree(params)
    params = unravel(flat + 0.1 * jax.random.normal(key, flat.shape))  # cond ≠ uncond
    t = jnp.array([0.1, 0.3, 0.7, 1.0])  # outside, inside, inside, outside of (0.2, 0.8]
    cond = flow_dit_fn(dit, params, ids, mask, 1.0)(x, t)
    everywhere = flow_dit_fn(dit, params, ids, mask, 3.0)(x, t)
    interval = flow_dit_fn(dit, params, ids, mask, 3.0, interval=(0.2, 0.8))(x, t)
    assert not np.allclose(cond, everywhere, atol=1e-4)
    inside = np.array([False, True, True, False])
    np.testing.assert_allclose(interval[inside], everywhere[inside], atol=1e-5)
    np.testing.assert_allclose(interval[~inside], cond[~inside], atol=1e-5)
    with pytest.raises(ValueError, match="0 <= lo < hi <= 1"):
        flow_dit_fn(dit, params, ids, mask, 3.0, interval=(0.8, 0.2))
