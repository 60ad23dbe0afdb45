"""Diffusion processes as pure functions: Gaussian (continuous latents), masked (discrete ids),
flow (rectified flow over continuous latents).

The Gaussian functions are exported flat; the masked and flow ones stay in their modules
(`diffusion.masked`, `diffusion.masked_samplers`, `diffusion.masked_decoding`, `diffusion.flow`,
`diffusion.flow_samplers`)
because their names (training_loss, ...) mirror the Gaussian ones.
"""

from crossmodal_jax.diffusion import flow, flow_samplers, masked, masked_decoding, masked_samplers
from crossmodal_jax.diffusion.dpm_solver import (
    dpm_solver_timesteps,
    dpmpp_2m_sample,
    euler_sample,
)
from crossmodal_jax.diffusion.gaussian import (
    PREDICTIONS,
    SCHEDULES,
    GaussianSchedule,
    cfg_combine,
    cosine_betas,
    guided_model_fn,
    in_guidance_interval,
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
    "flow",
    "flow_samplers",
    "masked",
    "masked_decoding",
    "masked_samplers",
    "PREDICTIONS",
    "SCHEDULES",
    "GaussianSchedule",
    "cfg_combine",
    "cosine_betas",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpm_solver_timesteps",
    "dpmpp_2m_sample",
    "euler_sample",
    "guided_model_fn",
    "in_guidance_interval",
    "linear_betas",
    "make_schedule",
    "model_target",
    "predict_x0_eps",
    "q_posterior",
    "q_sample",
    "training_loss",
]
