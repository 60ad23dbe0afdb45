"""Objectives injected into the shared `train_step`.

Each factory closes over its (static) modules and settings and returns
    loss(params, model_state, batch, key) -> (loss, (new_model_state, metrics)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.data import text as text_tok
from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.diffusion import flow, gaussian, masked
from crossmodal_jax.models.condition_stem import group_codes
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.lpips import lpips_distance
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages import source_mask
from crossmodal_jax.stages.augment import Augment
from crossmodal_jax.training.step import Objective


def psnr(mse: jax.Array | np.ndarray, value_range: float = 2.0) -> jax.Array | np.ndarray:
    """PSNR in dB for signals spanning `value_range` (2 for images in [-1, 1]); NumPy in, NumPy
    out (host-side evaluation), traced or device arrays in, jax out (the training step)."""
    xp = np if isinstance(mse, np.ndarray | np.generic) else jnp
    return 10.0 * xp.log10(value_range**2 / xp.maximum(mse, 1e-12))


def vqvae_objective(
    model: VQVAE, *, data_key: str = "image", perceptual_weight: float = 0.0
) -> Objective:
    """Reconstruction MSE (+ perceptual_weight * LPIPS, with the network's params frozen in
    model_state[PERCEPTUAL]) + the quantizer's own loss (aux["loss"]: VQ's commitment, LFQ's
    entropy terms, ...); an EMA codebook learns in `vq_stats`, not by gradient. Every scalar the
    quantizer reports (its health and loss terms) is logged under its own name."""

    def loss_fn(params, model_state, batch, key):
        batch = source_mask.canonical(batch, data_key)  # a padded source's padding: silence
        x = batch[data_key]
        variables = {k: v for k, v in model_state.items() if k != PERCEPTUAL}
        (x_rec, aux), new_vars = model.apply(
            {"params": params, **variables}, x, train=True, rngs={"vq": key}, mutable=["vq_stats"]
        )
        recon, metrics = reconstruction_terms(x, x_rec, aux, batch.get(mask_key(data_key)))
        recon = recon + perceptual_term(model_state, x, x_rec, perceptual_weight, metrics)
        return recon + aux["loss"], ({**model_state, **new_vars}, metrics)

    return loss_fn


# model_state key of the frozen LPIPS network's params (tokenizer.adversarial.perceptual_weights).
PERCEPTUAL = "perceptual"


def perceptual_term(
    model_state: dict, x: jax.Array, x_rec: jax.Array, weight: float, metrics: dict
) -> jax.Array:
    """weight * mean LPIPS(x, x_rec) (0 when weight is 0), logged as "perceptual_loss"."""
    if weight <= 0:
        return jnp.zeros((), jnp.float32)
    distance = jnp.mean(lpips_distance(model_state[PERCEPTUAL], x, x_rec))
    metrics["perceptual_loss"] = distance
    return weight * distance


def reconstruction_mse(x: jax.Array, x_rec: jax.Array) -> jax.Array:
    """Per-example mean squared error f32[B]."""
    return jnp.mean(jnp.square(x_rec - x).reshape(x.shape[0], -1), axis=-1)


def reconstruction_terms(
    x: jax.Array, x_rec: jax.Array, aux: dict, frame_mask: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(reconstruction MSE, the tokenizer's logged metrics: MSE, PSNR and every scalar the
    quantizer reports) of one batch; with a padded source's `frame_mask` [B, frames], over the
    frames that hold sound (source_mask.py)."""
    if frame_mask is None:
        mse_per_example = reconstruction_mse(x, x_rec)
    else:
        mse_per_example = source_mask.masked_mean_squares(x, x_rec, frame_mask)
    recon = jnp.mean(mse_per_example)
    metrics = {
        "recon_mse": recon,
        "psnr": jnp.mean(psnr(mse_per_example)),
        **{k: v for k, v in aux.items() if k not in ("indices", "loss")},
    }
    return recon, metrics


# Batch key of the code ids [B, *grid] of the modality the tokenizer encodes (the source of X→text,
# the target of text→image) when the generator stage computed them once before training
# (generator.precompute_codes): then the step does not run the tokenizer.
TOKENIZER_CODES = "tokenizer_codes"
# With a padded source: i32[B, *grid], 1 for the codes that hold sound (source_mask.py).
TOKENIZER_CODES_MASK = mask_key(TOKENIZER_CODES)
# Batch key of the frozen tokenizer's latents [B, h, w, c] when they were encoded once into shards
# before training (generator.latents.precompute; stages/latent_precompute.py).
TOKENIZER_LATENTS = "tokenizer_latents"


def encode_latents(tokenizer: VQVAE, tokenizer_vars: Any, x: jax.Array) -> jax.Array:
    """Quantized latents of the frozen tokenizer: the continuous targets of Gaussian diffusion."""
    z_q, _ = tokenizer.apply(tokenizer_vars, x, method="tokenize")
    return jax.lax.stop_gradient(z_q)


def batch_latents(tokenizer: VQVAE, tokenizer_vars: Any, batch: dict, key: str) -> jax.Array:
    """The quantized latents of batch[key]: the codebook vectors of the batch's precomputed
    TOKENIZER_CODES when it has them (the same z_q, without running the encoder), its stored
    TOKENIZER_LATENTS, else encoded."""
    if TOKENIZER_LATENTS in batch:
        return batch[TOKENIZER_LATENTS]
    if TOKENIZER_CODES in batch:
        z_q = tokenizer.apply(tokenizer_vars, batch[TOKENIZER_CODES], method="lookup")
        return jax.lax.stop_gradient(z_q)
    return encode_latents(tokenizer, tokenizer_vars, batch[key])


def normalize_latents(z: jax.Array, stats: dict) -> jax.Array:
    return (z - stats["mean"]) / stats["std"]


def denormalize_latents(z: jax.Array, stats: dict) -> jax.Array:
    return z * stats["std"] + stats["mean"]


def drop_condition(mask_BxL: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Zero whole condition masks with probability `rate`: the unconditional branch of CFG."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (mask_BxL.shape[0],))
    return mask_BxL * keep[:, None].astype(mask_BxL.dtype)


def gaussian_diffusion_objective(
    dit: DiT,
    tokenizer: VQVAE,
    schedule: gaussian.GaussianSchedule,
    *,
    prediction: str,
    cond_drop: float,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    target_key: str = "image",
    condition: TokenFn | None = None,
) -> Objective:
    """DiT loss of Gaussian diffusion over the frozen tokenizer's normalized, quantized latents,
    conditioned on `condition(model_state, batch)` (default: the caption's ids).

    `model_state` = {"tokenizer": frozen VQ-VAE variables, "latents": {"mean", "std"}, and
    "text_encoder" when the condition is a pretrained encoder's states}.
    """
    condition = condition or text_tokens()

    def loss_fn(params, model_state, batch, key):
        drop_key, loss_key = jax.random.split(key)
        z = batch_latents(tokenizer, model_state["tokenizer"], batch, target_key)
        z = normalize_latents(z, model_state["latents"])
        cond_ids, cond_mask = condition(model_state, batch)
        cond_mask = drop_condition(cond_mask, drop_key, cond_drop)

        def model_fn(xt, t):
            return dit.apply({"params": params}, xt, t, cond_ids, cond_mask, train=True)

        loss, _ = gaussian.training_loss(
            schedule,
            model_fn,
            z,
            loss_key,
            prediction=prediction,
            weighting=weighting,
            min_snr_gamma=min_snr_gamma,
        )
        return loss, (model_state, {})

    return loss_fn


# ---------------------------------------------------------------------------------- rectified flow

# The DiT's timestep embedding expects Gaussian timestep units (0..999); flow time lives in [0, 1]
# (1 = noise). Scaled once here, for the objective and the sampler alike.
FLOW_TIME_SCALE = 1000.0


def flow_matching_objective(
    dit: DiT,
    tokenizer: VQVAE,
    *,
    time_sampling: str,
    logit_mean: float,
    logit_std: float,
    cond_drop: float,
    target_key: str = "image",
    condition: TokenFn | None = None,
) -> Objective:
    """DiT loss of rectified flow (velocity regression, diffusion/flow.py) over the frozen
    tokenizer's normalized, quantized latents: the same inputs as `gaussian_diffusion_objective`.
    """
    condition = condition or text_tokens()

    def loss_fn(params, model_state, batch, key):
        drop_key, loss_key = jax.random.split(key)
        z = batch_latents(tokenizer, model_state["tokenizer"], batch, target_key)
        z = normalize_latents(z, model_state["latents"])
        cond_ids, cond_mask = condition(model_state, batch)
        cond_mask = drop_condition(cond_mask, drop_key, cond_drop)

        def model_fn(xt, t):
            return dit.apply(
                {"params": params}, xt, t * FLOW_TIME_SCALE, cond_ids, cond_mask, train=True
            )

        loss, _ = flow.training_loss(
            model_fn,
            z,
            loss_key,
            time_sampling=time_sampling,
            logit_mean=logit_mean,
            logit_std=logit_std,
        )
        return loss, (model_state, {})

    return loss_fn


# ----------------------------------------------------------------------------- masked diffusion

# The DiT's timestep embedding expects diffusion time in Gaussian timestep units (0..1000); masked
# diffusion time lives in [0, 1].
MASKED_TIME_SCALE = 1000.0

TokenFn = Callable[[Any, dict], tuple[jax.Array, jax.Array]]  # (model_state, batch) -> (ids, mask)


def word_ids(ids_BxL: jax.Array) -> jax.Array:
    """The word each caption byte belongs to: the number of spaces before it. A space ends its
    word; EOS and PAD form the last unit (the caption's length is decided as one unit)."""
    is_space = (ids_BxL == ord(" ") + text_tok.BYTE_OFFSET).astype(jnp.int32)
    return jnp.cumsum(is_space, axis=1) - is_space


def text_tokens(key: str = "text") -> TokenFn:
    """Caption bytes of the batch and their mask (PAD = 0)."""
    return lambda model_state, batch: (batch[key], batch[f"{key}_mask"])


def encoded_text(encoder: nn.Module, key: str = "text") -> TokenFn:
    """The caption ids through a frozen pretrained text encoder (its variables in
    model_state["text_encoder"]): its last hidden states [B, L, D] and the mask. No gradient
    reaches the encoder, so its backward pass is never computed."""

    def fn(model_state, batch):
        ids, mask = batch[key], batch[f"{key}_mask"]
        states = encoder.apply(model_state["text_encoder"], ids, mask)
        return jax.lax.stop_gradient(states), mask

    return fn


def source_code_ids(tokenizer: VQVAE, tokenizer_vars: Any, x: jax.Array) -> jax.Array:
    """The frozen tokenizer's code ids of x: i32[B, *grid]."""
    _, ids = tokenizer.apply(tokenizer_vars, x, method="tokenize")
    return jax.lax.stop_gradient(ids).astype(jnp.int32)


def vq_tokens(tokenizer: VQVAE, key: str, patch: tuple[int, ...] = ()) -> TokenFn:
    """Code ids of the frozen tokenizer for batch[key] (or the batch's precomputed TOKENIZER_CODES),
    flattened to [B, tokens]; mask all ones. Ids cannot be grouped: `patch` must be empty (same
    signature as `vq_vectors`)."""
    if any(p != 1 for p in patch):
        raise ValueError(f"code ids cannot be grouped (patch={patch}); use vectors")

    def tokens(model_state, batch):
        if TOKENIZER_CODES in batch:
            ids = batch[TOKENIZER_CODES]
        else:
            batch = source_mask.canonical(batch, key)
            ids = source_code_ids(tokenizer, model_state["tokenizer"], batch[key])
        depth = tokenizer.code_depth  # residual stages: a trailing axis of ids a position
        grid = ids.shape[1:] if depth == 1 else ids.shape[1:-1]
        mask = source_mask.condition_mask(batch, key, grid, (), codes_key=TOKENIZER_CODES)
        ids = ids.reshape(ids.shape[0], -1)
        if mask is None:
            return ids, jnp.ones_like(ids)
        return ids, jnp.repeat(mask, depth, axis=1)  # the ids of one position share its mask

    return tokens


def vq_vectors(tokenizer: VQVAE, key: str, patch: tuple[int, ...] = ()) -> TokenFn:
    """Quantized code vectors of the frozen tokenizer for batch[key] (or for the batch's
    precomputed TOKENIZER_CODES), grouped into tokens of `patch` codes each (`group_codes`; () = one
    code a token): [B, tokens, features], and a mask of ones. The same codes as `vq_tokens`,
    given to the DiT as their codebook vectors. Grouping shortens the DiT's sequence by
    prod(patch) (the spectrogram's 4 mel codes of a time step become one token) at no loss of
    what the DiT sees."""

    def vectors(model_state, batch):
        batch = source_mask.canonical(batch, key)  # a padded source's padding: silence
        z_q = batch_latents(tokenizer, model_state["tokenizer"], batch, key)
        grid = z_q.shape[1:-1]
        mask = source_mask.condition_mask(batch, key, grid, patch, codes_key=TOKENIZER_CODES)
        z_q = group_codes(z_q, tuple(patch))
        return z_q, jnp.ones(z_q.shape[:2], jnp.int32) if mask is None else mask

    return vectors


# How X→text generators see the source's tokens (config generator.model.cond_input).
SOURCE_CONDITIONS = {"ids": vq_tokens, "vectors": vq_vectors}


def masked_diffusion_objective(
    dit: nn.Module,
    schedule: masked.MaskSchedule,
    *,
    mask_id: int,
    target: TokenFn,
    condition: TokenFn,
    cond_drop: float,
    weighting: str = "elbo",
    augment: Augment | None = None,
    word_mask_prob: float = 0.0,
) -> Objective:
    """MDLM loss of absorbing-state diffusion over target ids, conditioned on source ids.

    `target` gives the ids to generate (caption bytes, or VQ ids of an image); `condition` the ids
    the DiT attends to (VQ ids of the source modality, or caption bytes). `augment` (see
    augment.py) transforms the batch's source before it is tokenized, with its own key.
    `word_mask_prob` > 0 (text targets): that fraction of captions is masked word by word
    (masked.forward_mask units = `word_ids`).
    """

    def loss_fn(params, model_state, batch, key):
        if augment is not None:
            key, aug_key = jax.random.split(key)
            batch = augment(batch, aug_key)
        drop_key, loss_key = jax.random.split(key)
        x0, _ = target(model_state, batch)
        cond_ids, cond_mask = condition(model_state, batch)
        cond_mask = drop_condition(cond_mask, drop_key, cond_drop)

        # Folded in, not split off: runs without dropout keep the random stream they always had.
        dropout_rngs = {"dropout": jax.random.fold_in(key, 1)}

        def logits_fn(xt, t):
            t_units = t * MASKED_TIME_SCALE
            return dit.apply(
                {"params": params}, xt, t_units, cond_ids, cond_mask, train=True, rngs=dropout_rngs
            )

        units = word_ids(x0) if word_mask_prob > 0 else None
        loss, metrics = masked.training_loss(
            schedule,
            logits_fn,
            x0,
            loss_key,
            mask_id=mask_id,
            weighting=weighting,
            unit_ids_BxL=units,
            unit_prob=word_mask_prob,
        )
        return loss, (model_state, metrics)

    return loss_fn
