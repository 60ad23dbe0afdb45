"""Ancestral (DDPM) and DDIM samplers for the Gaussian diffusion in `gaussian.py`.

Both take the initial noise x_T explicitly (so a fixed x_T gives a reproducible run) and loop with
`lax.scan`, so they compile to one loop body whatever the number of steps. `model_fn(xt, t) -> out`
is called with t of shape [B] (int32); wrap it with `gaussian.guided_model_fn` for classifier-free
guidance. Everything is jit-compatible; the keyword arguments `prediction`, `num_steps`,
`variance` and `clip_x0` must be static under jit (bind them with functools.partial); `eta` may be
traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.diffusion.gaussian import (
    GaussianSchedule,
    ModelFn,
    check_prediction,
    eps_from_x0,
    predict_x0_eps,
    q_posterior,
)

Array = jax.Array

# The reverse-step variance of ddpm_sample (guided_diffusion's ModelVarType): the posterior
# variance beta_tilde_t (the lower bound), beta_t (the upper bound), or a model-chosen log-space mix
# of the two (Nichol & Dhariwal 2021, eq. 15), as DiT's learn_sigma checkpoints are trained for.
DDPM_VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def _full_t(t: Array, x: Array) -> Array:
    return jnp.full((x.shape[0],), t, jnp.int32)


def _x0_eps(
    s: GaussianSchedule,
    x: Array,
    t_B: Array,
    out: Array,
    prediction: str,
    clip_x0: float | None,
) -> tuple[Array, Array]:
    """Model output -> (x0, eps); with clipping, eps is re-derived from the clipped x0."""
    x0, eps = predict_x0_eps(s, x, t_B, out, prediction)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        eps = eps_from_x0(s, x, t_B, x0)
    return x0, eps


def learned_range_log_variance(s: GaussianSchedule, t: Array, v: Array) -> Array:
    """log sigma_t^2 = frac log beta_t + (1 - frac) log beta_tilde_t, frac = (v + 1) / 2.

    v = -1 gives the clipped posterior log variance (fixed_small), v = +1 log beta_t (fixed_large).
    `t` is a scalar timestep of `s`; v is not clipped to [-1, 1], as guided_diffusion does not.
    """
    frac = (v.astype(jnp.float32) + 1.0) / 2.0
    max_log = jnp.log(s.betas[t])
    min_log = s.posterior_log_variance_clipped[t]
    return frac * max_log + (1.0 - frac) * min_log


def _step_keys(key: Array, num_steps: int) -> Array:
    """One key per step ([num_steps]), or per step and example ([num_steps, B]) for keys [B]."""
    if key.ndim == 0:
        return jax.random.split(key, num_steps)
    return jax.vmap(lambda k: jax.random.split(k, num_steps), out_axes=1)(key)


def _step_noise(step_key: Array, shape: tuple[int, ...]) -> Array:
    if step_key.ndim == 0:
        return jax.random.normal(step_key, shape, jnp.float32)
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(step_key)


def ddpm_noise(key: Array, shape: tuple[int, ...], num_steps: int) -> Array:
    """f32 [num_steps, *shape]: the noise ddpm_sample draws at each step (from t = T-1 down; the
    last is drawn but not added), so that a peer sampler can be given the same."""
    return jax.vmap(lambda k: _step_noise(k, shape))(_step_keys(key, num_steps))


def ddpm_sample(
    s: GaussianSchedule,
    model_fn: ModelFn,
    x_T: Array,
    key: Array,
    *,
    prediction: str,
    clip_x0: float | None = None,
    variance: str = "fixed_small",
) -> Array:
    """Ancestral sampling: x_{t-1} ~ N(posterior mean of (x_t, x0_hat), sigma_t^2) for
    t = T-1..0; no noise at t=0.

    sigma_t^2 is named by `variance` (DDPM_VARIANCES). With "learned_range", model_fn's last axis
    holds [out | v], twice x's: v picks the variance (learned_range_log_variance). `key` is one key,
    or one per example (shape [B]): then an example's noise does not depend on its batch.
    """
    check_prediction(prediction)
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {DDPM_VARIANCES}")
    num_t = s.num_timesteps
    ts = jnp.arange(num_t - 1, -1, -1, dtype=jnp.int32)

    def step(x: Array, t_and_key: tuple[Array, Array]) -> tuple[Array, None]:
        t, step_key = t_and_key
        t_B = _full_t(t, x)
        out = model_fn(x, t_B)
        if variance == "learned_range":
            out, v = jnp.split(out, 2, axis=-1)
        x0, _ = _x0_eps(s, x, t_B, out, prediction, clip_x0)
        mean, _, log_var = q_posterior(s, x0, x, t_B)
        if variance == "learned_range":
            log_var = learned_range_log_variance(s, t, v)
        elif variance == "fixed_large":
            log_var = jnp.log(s.betas[t])
        noise = _step_noise(step_key, x.shape)
        nonzero = (t > 0).astype(
            jnp.float32
        )  # the last step returns the posterior mean (= x0 at t=0)
        return mean + nonzero * jnp.exp(0.5 * log_var) * noise, None

    x, _ = jax.lax.scan(step, x_T.astype(jnp.float32), (ts, _step_keys(key, num_t)))
    return x


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """`num_steps` distinct timesteps evenly spaced over [0, T-1], from T-1 down to 0."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    ts = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32)
    return ts[::-1].copy()


def ddim_sample(
    s: GaussianSchedule,
    model_fn: ModelFn,
    x_T: Array,
    key: Array,
    *,
    num_steps: int,
    eta: float = 0.0,
    prediction: str,
    clip_x0: float | None = None,
) -> Array:
    """DDIM (Song et al. 2021, eq. 12) on `num_steps` evenly spaced timesteps; eta=0: deterministic.

    From t to the next sampled step t' (abar' = 1 after the last one, so the result is x0_hat):
        x_t' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar').
    eta=1 matches the ancestral sampler's variance on the strided chain.
    """
    check_prediction(prediction)
    ts = ddim_timesteps(s.num_timesteps, num_steps)
    # After the last step comes "t = T", an extra slot holding abar = 1 (clean data).
    ts_prev = np.append(ts[1:], s.num_timesteps).astype(np.int32)
    abar_ext = jnp.concatenate([s.alphas_cumprod, jnp.ones((1,), jnp.float32)])
    keys = jax.random.split(key, num_steps)

    def step(x: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        t, t_prev, step_key = xs
        t_B = _full_t(t, x)
        x0, eps = _x0_eps(s, x, t_B, model_fn(x, t_B), prediction, clip_x0)
        abar, abar_prev = abar_ext[t], abar_ext[t_prev]
        sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        dir_coef = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
        noise = jax.random.normal(step_key, x.shape, jnp.float32)
        return jnp.sqrt(abar_prev) * x0 + dir_coef * eps + sigma * noise, None

    xs = (jnp.asarray(ts), jnp.asarray(ts_prev), keys)
    x, _ = jax.lax.scan(step, x_T.astype(jnp.float32), xs)
    return x
