"""Diffusion processes as pure functions: Gaussian (continuous latents), masked (discrete ids)."""

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
