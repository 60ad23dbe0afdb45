"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) and the Euler probability-flow
sampler for the Gaussian diffusion in `gaussian.py`.

Notation: at a timestep t, alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) and the half log-SNR
lambda = log(alpha / sigma). On the sampled timesteps t_0 > t_1 > ... > t_{N-1} (then "t_N":
clean data, alpha_N = 1, sigma_N = 0), with x0_i = the model's data prediction at (x_i, t_i),
h_i = lambda_{i+1} - lambda_i and r_i = h_{i-1} / h_i, one step is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D_i,
    D_i     = x0_i + (x0_i - x0_{i-1}) / (2 r_i)      (second order, multistep),
    D_i     = x0_i                                     (first order: the first and the last step).

The first step has no previous x0; the last one lands on sigma = 0, where h is infinite and the
first-order step returns x0 itself. This is exactly diffusers' `DPMSolverMultistepScheduler` with
`algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"` and
`final_sigmas_type="zero"` (which makes the last step first order whatever `lower_order_final`
says), checked to 1e-5 by tests/diffusion/test_dpm_solver.py. The coefficient alpha_{i+1}
(1 - e^{-h_i}) is computed as alpha_{i+1} - sigma_{i+1} alpha_i / sigma_i, the same number without
the log of sigma_N = 0.

Euler: DDIM with eta = 0 *is* the Euler method for the probability-flow ODE written in
xbar = x / alpha and sigmabar = sigma / alpha (Song et al. 2021, DDIM section 4.3; Karras et al.
2022, and diffusers' EulerDiscreteScheduler): d xbar / d sigmabar = eps(x), one Euler step of
which is DDIM's eq. 12. It is also DPM-Solver++ of first order. So `euler_sample` is DDIM with
eta = 0, not a second implementation.

Both samplers are deterministic, jit-compatible, and loop with `lax.scan` over per-step
coefficients computed once from the schedule (the schedule may be traced); `num_steps`,
`spacing`, `timesteps` and `prediction` must be static (bind them with functools.partial).
`model_fn(x, t_B)` is called with t_B i32[B], as in `gaussian_samplers.py`; wrap it with
`gaussian.guided_model_fn` for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.diffusion.gaussian import (
    GaussianSchedule,
    ModelFn,
    check_prediction,
    predict_x0_eps,
)
from crossmodal_jax.diffusion.gaussian_samplers import ddim_sample

Array = jax.Array

# diffusers' `timestep_spacing` options (Lin et al. 2023, table 2), with steps_offset = 0. All
# three leave out t = 0: its x_t is almost clean, and the last step goes to sigma = 0 anyway.
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def dpm_solver_timesteps(
    num_timesteps: int, num_steps: int, spacing: str = "linspace"
) -> np.ndarray:
    """The `num_steps` decreasing timesteps diffusers' DPMSolverMultistepScheduler.set_timesteps
    picks for `timestep_spacing=spacing` (T = num_timesteps):

      linspace: round(linspace(0, T-1, N+1)) reversed, without the final 0 (T-1 first);
      leading:  k * (T // (N+1)) for k = N..1;
      trailing: round(arange(T, 0, -T/N)) - 1 (T-1 first, T/N - 1 last).
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {TIMESTEP_SPACINGS}")
    if not 1 <= num_steps < num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps - 1}], got {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(0, num_timesteps - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, num_steps + 1) * (num_timesteps // (num_steps + 1))).round()[::-1][:-1]
    else:
        ts = np.arange(num_timesteps, 0, -num_timesteps / num_steps).round() - 1
    ts = ts.astype(np.int32)
    if len(ts) != num_steps or np.any(np.diff(ts) >= 0) or ts[-1] < 0:
        raise ValueError(
            f"{spacing!r} spacing gives no {num_steps} distinct timesteps out of {num_timesteps}"
        )
    return ts.copy()


def dpmpp_2m_coefficients(s: GaussianSchedule, timesteps: np.ndarray) -> tuple[Array, Array, Array]:
    """Per-step (c_x, c_x0, c_d1), each f32[N], such that
    x_{i+1} = c_x x_i + c_x0 x0_i + c_d1 (x0_i - x0_{i-1}) (see the module docstring)."""
    abar = s.alphas_cumprod[jnp.asarray(timesteps)]
    alpha = jnp.append(jnp.sqrt(abar), 1.0)  # "t_N" = clean data
    sigma = jnp.append(jnp.sqrt(1.0 - abar), 0.0)
    c_x = sigma[1:] / sigma[:-1]
    c_x0 = alpha[1:] - sigma[1:] * alpha[:-1] / sigma[:-1]  # alpha_{i+1} (1 - e^{-h_i})
    # Second order on steps 1..N-2 only: step 0 has no history and step N-1 lands on sigma = 0
    # (h = inf), so every lambda needed here is finite.
    c_d1 = jnp.zeros_like(c_x)
    if len(timesteps) > 2:
        lam = jnp.log(alpha[:-1]) - jnp.log(sigma[:-1])
        h = lam[1:] - lam[:-1]  # h_0 .. h_{N-2}
        r = h[:-1] / h[1:]  # r_1 .. r_{N-2}
        c_d1 = c_d1.at[1:-1].set(c_x0[1:-1] / (2.0 * r))
    return c_x, c_x0, c_d1


def dpmpp_2m_sample(
    s: GaussianSchedule,
    model_fn: ModelFn,
    x_T: Array,
    *,
    prediction: str,
    num_steps: int | None = None,
    spacing: str = "linspace",
    timesteps: Sequence[int] | np.ndarray | None = None,
    clip_x0: float | None = None,
) -> Array:
    """DPM-Solver++(2M) from the noise x_T to a sample, one model call per step.

    Give `num_steps` (timesteps from `dpm_solver_timesteps(T, num_steps, spacing)`) or an explicit
    strictly decreasing `timesteps` in [0, T-1]. `clip_x0` clips each data prediction to
    [-clip_x0, clip_x0] (static thresholding). No randomness: x_T fixes the result.
    """
    check_prediction(prediction)
    if (num_steps is None) == (timesteps is None):
        raise ValueError("give exactly one of num_steps and timesteps")
    if timesteps is None:
        ts = dpm_solver_timesteps(s.num_timesteps, num_steps, spacing)
    else:
        ts = np.asarray(timesteps, np.int32)
        if ts.ndim != 1 or len(ts) == 0 or np.any(np.diff(ts) >= 0):
            raise ValueError(f"timesteps must be strictly decreasing, got {ts.tolist()}")
        if ts[0] >= s.num_timesteps or ts[-1] < 0:
            raise ValueError(f"timesteps must lie in [0, {s.num_timesteps - 1}], got {ts.tolist()}")
    c_x, c_x0, c_d1 = dpmpp_2m_coefficients(s, ts)

    def step(carry: tuple[Array, Array], xs: tuple[Array, ...]) -> tuple[tuple[Array, Array], None]:
        x, x0_prev = carry
        t, a, b, c = xs
        t_B = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = predict_x0_eps(s, x, t_B, model_fn(x, t_B), prediction)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
        return (a * x + b * x0 + c * (x0 - x0_prev), x0), None

    x = x_T.astype(jnp.float32)
    (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), (jnp.asarray(ts), c_x, c_x0, c_d1))
    return x


def euler_sample(
    s: GaussianSchedule,
    model_fn: ModelFn,
    x_T: Array,
    *,
    num_steps: int,
    prediction: str,
    clip_x0: float | None = None,
) -> Array:
    """Euler steps of the probability-flow ODE: DDIM with eta = 0 (module docstring), on DDIM's
    timesteps (`ddim_timesteps`). Deterministic; the key DDIM takes is unused."""
    return ddim_sample(
        s,
        model_fn,
        x_T,
        jax.random.key(0),
        num_steps=num_steps,
        eta=0.0,
        prediction=prediction,
        clip_x0=clip_x0,
    )
