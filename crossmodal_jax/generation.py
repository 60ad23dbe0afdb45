"""Text→image generation: guided Gaussian sampling of VQ latents with the DiT, decoded by the VQ-VAE.

Used by training (sample grids), evaluation and the `sample` CLI, so all three show the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from crossmodal_jax.diffusion import gaussian, gaussian_samplers
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.objectives import denormalize_latents


def _ddim(schedule, model_fn, x_T, key, cfg, prediction):
    return gaussian_samplers.ddim_sample(
        schedule, model_fn, x_T, key, num_steps=cfg.steps, eta=cfg.eta, prediction=prediction
    )


def _ddpm(schedule, model_fn, x_T, key, cfg, prediction):
    return gaussian_samplers.ddpm_sample(schedule, model_fn, x_T, key, prediction=prediction)


SAMPLERS = {"ddim": _ddim, "ddpm": _ddpm}


def guided_dit_fn(dit: DiT, params: Any, cond_ids, cond_mask, scale: float) -> Callable:
    """model_fn(xt, t) with classifier-free guidance: one batched call for both branches."""
    if scale == 1.0:
        return lambda xt, t: dit.apply({"params": params}, xt, t, cond_ids, cond_mask)

    def pair_fn(xt, t):
        both = dit.apply(
            {"params": params},
            jnp.concatenate([xt, xt]),
            jnp.concatenate([t, t]),
            jnp.concatenate([cond_ids, cond_ids]),
            jnp.concatenate([cond_mask, jnp.zeros_like(cond_mask)]),
        )
        return tuple(jnp.split(both, 2))

    return gaussian.guided_model_fn(pair_fn, scale)


def make_image_generator(
    dit: DiT,
    tokenizer: VQVAE,
    schedule: gaussian.GaussianSchedule,
    sample_cfg: ml_collections.ConfigDict,
    *,
    prediction: str,
    latent_hwc: tuple[int, int, int],
) -> Callable:
    """A jitted fn(params, model_state, cond_ids, cond_mask, key) -> images in [-1, 1]."""
    if sample_cfg.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sample_cfg.sampler!r}; available: {sorted(SAMPLERS)}")
    sampler = SAMPLERS[sample_cfg.sampler]

    @partial(jax.jit, out_shardings=P())  # replicated: every process can read the images
    def generate(params, model_state, cond_ids, cond_mask, key):
        noise_key, sample_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, (cond_ids.shape[0], *latent_hwc))
        model_fn = guided_dit_fn(dit, params, cond_ids, cond_mask, sample_cfg.guidance)
        z = sampler(schedule, model_fn, x_T, sample_key, sample_cfg, prediction)
        z = denormalize_latents(z, model_state["latents"])
        tok_vars = model_state["tokenizer"]
        if sample_cfg.snap_to_codebook:
            z, _ = tokenizer.apply(tok_vars, z, method=VQVAE.quantize)
        images = tokenizer.apply(tok_vars, z, method=VQVAE.decode)
        return jnp.clip(images, -1.0, 1.0)

    return generate
