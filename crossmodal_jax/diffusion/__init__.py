"""Diffusion processes as pure functions: Gaussian (continuous latents), masked (discrete ids).

The Gaussian functions are exported flat; the masked ones stay in their modules
(`diffusion.masked`, `diffusion.masked_samplers`) because their names (training_loss, ...) mirror
the Gaussian ones.
"""

from crossmodal_jax.diffusion import masked, masked_samplers
from crossmodal_jax.diffusion.gaussian import (
    PREDICTIONS,
    SCHEDULES,
    GaussianSchedule,
    cfg_combine,
    cosine_betas,
    guided_model_fn,
    linear_betas,
    make_schedule,
    model_target,
    predict_x0_eps,
    q_posterior,
    q_sample,
    training_loss,
)
from crossmodal_jax.diffusion.gaussian_samplers import ddim_sample, ddim_timesteps, ddpm_sample

__all__ = [
    "masked",
    "masked_samplers",
    "PREDICTIONS",
    "SCHEDULES",
    "GaussianSchedule",
    "cfg_combine",
    "cosine_betas",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "guided_model_fn",
    "linear_betas",
    "make_schedule",
    "model_target",
    "predict_x0_eps",
    "q_posterior",
    "q_sample",
    "training_loss",
]
