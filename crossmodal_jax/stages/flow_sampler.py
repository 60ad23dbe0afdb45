"""Text→image generation by a DiT trained with rectified flow (objectives.flow_matching_objective):
an ODE sampler (diffusion/flow_samplers.py) from noise to normalized VQ latents, then the same
snapping and decoding as the Gaussian process (samplers.decode_latents).

Kept beside samplers.py, not in it: the flow process has its own sampler table
(`flow_samplers.SAMPLERS`, checked by config validation through generators.PROCESSES).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import ml_collections
from jax.sharding import PartitionSpec as P

from crossmodal_jax.diffusion import flow_samplers, gaussian
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages.objectives import FLOW_TIME_SCALE, TokenFn
from crossmodal_jax.stages.samplers import cfg_pair_fn, decode_latents


def flow_dit_fn(
    dit: DiT,
    params,
    cond_ids,
    cond_mask,
    scale: float,
    *,
    interval: tuple[float, float] = gaussian.NO_GUIDANCE_INTERVAL,
) -> Callable:
    """velocity_fn(x, t) for flow time t f32[B] in [0, 1] (1 = noise), with classifier-free
    guidance in one batched call for both branches, fed the DiT's timestep units. Guidance acts
    only where lo < t <= hi for `interval` = (lo, hi) (Kynkäänniemi et al. 2024; as the Gaussian
    chain's fractions of the way to noise); elsewhere the conditional velocity is used as is."""

    def call(x, t, ids, mask):
        return dit.apply({"params": params}, x, t * FLOW_TIME_SCALE, ids, mask)

    if scale == 1.0:
        return lambda x, t: call(x, t, cond_ids, cond_mask)
    # num_timesteps=None: the interval is tested on the flow time t itself.
    return gaussian.guided_model_fn(
        cfg_pair_fn(call, cond_ids, cond_mask), scale, interval=tuple(interval)
    )


def make_flow_image_generator(
    dit: DiT,
    tokenizer: VQVAE,
    sample_cfg: ml_collections.ConfigDict,
    *,
    latent_hwc: tuple[int, int, int],
    condition: TokenFn | None = None,
) -> Callable:
    """A jitted fn(params, model_state, cond_ids, cond_mask, key) -> images in [-1, 1]; the
    caption ids pass through `condition` (a text encoder; default: as they are).

    `key` draws the noise x_1 only: the ODE samplers are deterministic. `sample_cfg.sampler` names
    a key of flow_samplers.SAMPLERS, run for `sample_cfg.steps` steps on a grid shifted by
    `sample_cfg.shift`.
    """
    if sample_cfg.sampler not in flow_samplers.SAMPLERS:
        raise ValueError(
            f"unknown flow sampler {sample_cfg.sampler!r}; available: "
            f"{sorted(flow_samplers.SAMPLERS)}"
        )
    solve = partial(
        flow_samplers.SAMPLERS[sample_cfg.sampler],
        num_steps=sample_cfg.steps,
        shift=sample_cfg.shift,
    )

    @partial(jax.jit, out_shardings=P())  # replicated: every process can read the images
    def generate(params, model_state, cond_ids, cond_mask, key):
        x_1 = jax.random.normal(key, (cond_ids.shape[0], *latent_hwc))
        if condition is not None:
            cond_ids, cond_mask = condition(model_state, {"text": cond_ids, "text_mask": cond_mask})
        velocity_fn = flow_dit_fn(
            dit,
            params,
            cond_ids,
            cond_mask,
            sample_cfg.guidance,
            interval=tuple(sample_cfg.guidance_interval),
        )
        z = solve(velocity_fn, x_1)
        return decode_latents(tokenizer, model_state, z, snap=sample_cfg.snap_to_codebook)

    return generate
