"""Generation with a trained DiT: text→image (Gaussian over VQ latents, or masked over VQ ids,
decoded by the VQ-VAE) and X→text (masked diffusion over caption bytes, conditioned on VQ ids).

Used by training (sample grids), evaluation and the `sample` CLI, so all three show the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax.data import text as text_tok
from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.data.pipeline import pad_batch
from crossmodal_jax.diffusion import (
    dpm_solver,
    gaussian,
    gaussian_samplers,
    masked,
    masked_decoding,
)
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages.objectives import MASKED_TIME_SCALE, TokenFn, denormalize_latents


def _ddim(schedule, model_fn, x_T, key, cfg, prediction):
    return gaussian_samplers.ddim_sample(
        schedule, model_fn, x_T, key, num_steps=cfg.steps, eta=cfg.eta, prediction=prediction
    )


def _ddpm(schedule, model_fn, x_T, key, cfg, prediction):
    return gaussian_samplers.ddpm_sample(schedule, model_fn, x_T, key, prediction=prediction)


def _dpmpp_2m(schedule, model_fn, x_T, key, cfg, prediction):
    del key  # deterministic: x_T fixes the sample
    return dpm_solver.dpmpp_2m_sample(
        schedule, model_fn, x_T, num_steps=cfg.steps, prediction=prediction
    )


SAMPLERS = {"ddim": _ddim, "ddpm": _ddpm, "dpmpp_2m": _dpmpp_2m}


def cfg_pair_fn(call: Callable, cond, cond_mask) -> Callable:
    """pair_fn(x, t) -> (conditional, unconditional) outputs of `call(x, t, cond, mask)` in one
    batched call: the second half of the doubled batch has its condition masked out."""

    def pair_fn(x, t):
        both = call(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([cond, cond]),
            jnp.concatenate([cond_mask, jnp.zeros_like(cond_mask)]),
        )
        return tuple(jnp.split(both, 2))

    return pair_fn


def guided_dit_fn(
    dit: DiT,
    params: Any,
    cond_ids,
    cond_mask,
    scale: float,
    *,
    interval: tuple[float, float] = gaussian.NO_GUIDANCE_INTERVAL,
    num_timesteps: int | None = None,
) -> Callable:
    """model_fn(xt, t) with classifier-free guidance: one batched call for both branches;
    only inside the guidance `interval` of the Gaussian chain (gaussian.guided_model_fn)."""

    def call(xt, t, ids, mask):
        return dit.apply({"params": params}, xt, t, ids, mask)

    if scale == 1.0:
        return lambda xt, t: call(xt, t, cond_ids, cond_mask)
    return gaussian.guided_model_fn(
        cfg_pair_fn(call, cond_ids, cond_mask),
        scale,
        interval=tuple(interval),
        num_timesteps=num_timesteps,
    )


def decode_latents(tokenizer: VQVAE, model_state: dict, z: jax.Array, *, snap: bool) -> jax.Array:
    """Images in [-1, 1] from sampled normalized latents: denormalized, snapped to the nearest
    codes when `snap` (the decoder only ever saw codebook vectors), decoded by the tokenizer."""
    z = denormalize_latents(z, model_state["latents"])
    tok_vars = model_state["tokenizer"]
    if snap:
        z = tokenizer.apply(tok_vars, z, method="snap")
    return jnp.clip(tokenizer.apply(tok_vars, z, method="decode"), -1.0, 1.0)


def make_image_generator(
    dit: DiT,
    tokenizer: VQVAE,
    schedule: gaussian.GaussianSchedule,
    sample_cfg: ml_collections.ConfigDict,
    *,
    prediction: str,
    latent_hwc: tuple[int, int, int],
    condition: TokenFn | None = None,
) -> Callable:
    """A jitted fn(params, model_state, cond_ids, cond_mask, key) -> images in [-1, 1]; the
    caption ids pass through `condition` (a text encoder; default: as they are)."""
    if sample_cfg.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sample_cfg.sampler!r}; available: {sorted(SAMPLERS)}")
    sampler = SAMPLERS[sample_cfg.sampler]

    @partial(jax.jit, out_shardings=P())  # replicated: every process can read the images
    def generate(params, model_state, cond_ids, cond_mask, key):
        noise_key, sample_key = jax.random.split(key)
        x_T = jax.random.normal(noise_key, (cond_ids.shape[0], *latent_hwc))
        if condition is not None:
            cond_ids, cond_mask = condition(model_state, {"text": cond_ids, "text_mask": cond_mask})
        model_fn = guided_dit_fn(
            dit,
            params,
            cond_ids,
            cond_mask,
            sample_cfg.guidance,
            interval=tuple(sample_cfg.guidance_interval),
            num_timesteps=schedule.num_timesteps,
        )
        z = sampler(schedule, model_fn, x_T, sample_key, sample_cfg, prediction)
        return decode_latents(tokenizer, model_state, z, snap=sample_cfg.snap_to_codebook)

    return generate


# ------------------------------------------------------------------------ masked (discrete) diffusion


def masked_logits_fn(dit: nn.Module, params: Any, cond_ids, cond_mask, scale: float) -> Callable:
    """logits_fn(x, t) for the masked sampler, with classifier-free guidance on the logits."""

    def call(x, t, ids, mask):
        return dit.apply({"params": params}, x, t * MASKED_TIME_SCALE, ids, mask)

    if scale == 1.0:
        return lambda x, t: call(x, t, cond_ids, cond_mask)
    return masked.guided_logits_fn(cfg_pair_fn(call, cond_ids, cond_mask), scale)


def masked_sampler(sample_cfg: ml_collections.ConfigDict) -> masked_decoding.MaskedSampler:
    """The entry of masked_decoding.MASKED_SAMPLERS that `sample_cfg.sampler` names."""
    if sample_cfg.sampler not in masked_decoding.MASKED_SAMPLERS:
        choices = sorted(masked_decoding.MASKED_SAMPLERS)
        raise ValueError(f"unknown masked sampler {sample_cfg.sampler!r}; available: {choices}")
    return masked_decoding.MASKED_SAMPLERS[sample_cfg.sampler]


def _masked_sample(logits_fn, key, sample_cfg, *, batch_size, length, mask_id, forbidden_ids):
    entry = masked_sampler(sample_cfg)
    return entry.fn(
        logits_fn,
        key,
        batch_size=batch_size,
        length=length,
        mask_id=mask_id,
        num_steps=sample_cfg.steps,
        temperature=sample_cfg.temperature,
        forbidden_ids=forbidden_ids,
        **{k: sample_cfg[k] for k in entry.options},  # only the keys this sampler reads
    )


def make_masked_image_generator(
    dit: nn.Module, tokenizer: VQVAE, sample_cfg: ml_collections.ConfigDict, *, code_grid
) -> Callable:
    """A jitted fn(params, model_state, cond_ids, cond_mask, key) -> images in [-1, 1].

    Samples the tokenizer's code ids (`code_grid` of them; mask id = vocab_size) and decodes them.
    """
    length = int(np.prod(code_grid))
    masked_sampler(sample_cfg)  # an unknown name fails here, not at the first call

    @partial(jax.jit, out_shardings=P())
    def generate(params, model_state, cond_ids, cond_mask, key):
        logits_fn = masked_logits_fn(dit, params, cond_ids, cond_mask, sample_cfg.guidance)
        ids = _masked_sample(
            logits_fn,
            key,
            sample_cfg,
            batch_size=cond_ids.shape[0],
            length=length,
            mask_id=tokenizer.vocab_size,
            forbidden_ids=None,
        )
        ids = ids.reshape(ids.shape[0], *code_grid)
        images = tokenizer.apply(model_state["tokenizer"], ids, method="decode_indices")
        return jnp.clip(images, -1.0, 1.0)

    return generate


def make_text_generator(
    dit: nn.Module,
    sample_cfg: ml_collections.ConfigDict,
    *,
    text_len: int,
    source_key: str,
    condition: Callable,
    forbidden_ids: tuple[int, ...] = (),
) -> Callable:
    """A jitted fn(params, model_state, source, key, source_mask=None) -> caption ids
    i32[B, text_len].

    `source` is the continuous input (image, log-mel, video), `source_mask` a padded source's
    frame mask (the batch's "audio_mask"; source_mask.py); `condition(model_state, batch)` turns
    them into what the DiT attends to (objectives.SOURCE_CONDITIONS: the frozen tokenizer's ids or
    code vectors). `forbidden_ids` are never emitted (a word vocabulary's unknown word). Decode
    the result with the experiment's caption tokenizer (`Experiment.text`).
    """
    masked_sampler(sample_cfg)  # an unknown name fails here, not at the first call

    @partial(jax.jit, out_shardings=P())
    def generate(params, model_state, source, key, source_mask=None):
        batch = {source_key: source}
        if source_mask is not None:
            batch[mask_key(source_key)] = source_mask
        cond, cond_mask = condition(model_state, batch)
        logits_fn = masked_logits_fn(dit, params, cond, cond_mask, sample_cfg.guidance)
        return _masked_sample(
            logits_fn,
            key,
            sample_cfg,
            batch_size=source.shape[0],
            length=text_len,
            mask_id=text_tok.MASK_ID,
            forbidden_ids=forbidden_ids,
        )

    return generate


def generate_in_batches(
    generate, state, ids: np.ndarray, mask: np.ndarray, key: jax.Array, batch_size: int
) -> np.ndarray:
    """Images for caption ids [N, L] in batches of exactly `batch_size` (the last one padded), so
    the sampler compiles once for every caller (prompt grids, the test split)."""
    out = []
    for i, start in enumerate(range(0, len(ids), batch_size)):
        n = min(batch_size, len(ids) - start)
        images = generate(
            state.ema_params,
            state.model_state,
            pad_batch(ids[start : start + n], batch_size),
            pad_batch(mask[start : start + n], batch_size),
            jax.random.fold_in(key, i),
        )
        out.append(np.asarray(images)[:n])
    return np.concatenate(out)
