"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022; SD3, Esser et al. 2024) as
pure JAX functions.

Conventions (those of SD3 and Flux):
  - time t is continuous in [0, 1]; t = 0 is the data x0, t = 1 is pure noise eps ~ N(0, I);
  - the forward path is the straight line x_t = (1 - t) x0 + t eps, so its velocity
    dx_t/dt = eps - x0 does not depend on t: that is the regression target;
  - a model function is `model_fn(x_t, t_B) -> v` with t_B f32[B] in [0, 1] and `v.shape ==
    x_t.shape`. Callers whose network expects timestep units (the DiT's 0..999) scale t inside
    their model_fn (stages/objectives.py FLOW_TIME_SCALE).

Because the velocity is linear in (x0, eps), classifier-free guidance on it is the Gaussian
process's `gaussian.guided_model_fn` unchanged. The ODE samplers live in `flow_samplers.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

# How training draws t: "uniform" on [0, 1), or "logit_normal" (SD3: t = sigmoid(n), n ~ N(m, s)),
# which spends most of the training signal on intermediate times, where the velocity is hardest to
# predict (at t = 1 it is just x_t - E[x0]); SD3 (sections 3.1, 5.1) found it the best of the
# t densities they compared.
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _bcast(t_B: Array, x: Array) -> Array:
    """t_B reshaped to [B, 1, ..., 1] so it broadcasts against x, in f32."""
    return jnp.asarray(t_B, jnp.float32).reshape((t_B.shape[0],) + (1,) * (x.ndim - 1))


def interpolate(x0: Array, noise: Array, t_B: Array) -> Array:
    """x_t = (1 - t) x0 + t eps: the straight path from data (t=0) to noise (t=1)."""
    t = _bcast(t_B, x0)
    return (1.0 - t) * x0.astype(jnp.float32) + t * noise.astype(jnp.float32)


def velocity_target(x0: Array, noise: Array) -> Array:
    """The path's velocity dx_t/dt = eps - x0, the same at every t."""
    return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def x0_eps_from_velocity(x_t: Array, t_B: Array, v: Array) -> tuple[Array, Array]:
    """The data and noise implied by a velocity at (x_t, t): x0 = x_t - t v, eps = x_t + (1-t) v."""
    t = _bcast(t_B, x_t)
    x_t, v = x_t.astype(jnp.float32), v.astype(jnp.float32)
    return x_t - t * v, x_t + (1.0 - t) * v


def shift_time(t: Array, shift: float) -> Array:
    """SD3's timestep shift t' = s t / (1 + (s - 1) t): s > 1 moves every t towards the noise end
    (more of a sampler's steps at high noise, where large latents need them); s = 1 is the identity.
    Keeps t = 0 and t = 1 fixed and is monotone for s > 0."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(
    key: Array,
    batch: int,
    *,
    kind: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> Array:
    """f32[batch] training times: U[0, 1), or sigmoid(N(logit_mean, logit_std)) (in (0, 1), median
    sigmoid(logit_mean))."""
    if kind not in TIME_SAMPLINGS:
        raise ValueError(f"unknown flow time sampling {kind!r}; choose one of {TIME_SAMPLINGS}")
    if kind == "uniform":
        return jax.random.uniform(key, (batch,), jnp.float32)
    n = logit_mean + logit_std * jax.random.normal(key, (batch,), jnp.float32)
    return jax.nn.sigmoid(n)


def velocity_loss(model_fn: ModelFn, x0: Array, noise: Array, t_B: Array) -> tuple[Array, Array]:
    """(mean squared velocity error, its per-example values f32[B]) at the given (x0, eps, t): the
    deterministic core of `training_loss`, for callers that draw their own t or noise."""
    x0 = x0.astype(jnp.float32)
    out = model_fn(interpolate(x0, noise, t_B), t_B).astype(jnp.float32)  # models may run in bf16
    sq_err = jnp.square(out - velocity_target(x0, noise)).reshape(x0.shape[0], -1)
    mse_per_example = jnp.mean(sq_err, axis=1)
    return jnp.mean(mse_per_example), mse_per_example


def training_loss(
    model_fn: ModelFn,
    x0: Array,
    key: Array,
    *,
    time_sampling: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """Conditional flow matching: t ~ `time_sampling`, eps ~ N(0, I), MSE between
    model_fn(x_t, t) and eps - x0, averaged per example, then over the batch.

    Returns (loss, aux) with aux = {"mse_per_example": f32[B], "t": f32[B]}, as the Gaussian
    `training_loss` does, so callers can plot the loss against t.
    """
    key_t, key_noise = jax.random.split(key)
    t = sample_time(
        key_t, x0.shape[0], kind=time_sampling, logit_mean=logit_mean, logit_std=logit_std
    )
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    loss, mse_per_example = velocity_loss(model_fn, x0, noise, t)
    return loss, {"mse_per_example": mse_per_example, "t": t}
