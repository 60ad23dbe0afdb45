"""Gaussian diffusion (DDPM/DDIM family) as pure JAX functions.

Conventions shared by every function here:
  - timesteps are int32 in [0, T-1]; step t=0 is the first noising step, so x_t at t=0 is already
    slightly noisy and `alphas_cumprod_prev[0] == 1` stands for the clean data x_{-1} = x0;
  - `x` arrays have any shape with a leading batch axis B, and `t` has shape [B];
  - a model function is `model_fn(xt, t) -> out` with `out.shape == xt.shape`; what `out` means is
    named by `prediction` ("eps": the noise; "v": sqrt(abar) eps - sqrt(1-abar) x0, Salimans & Ho).

Schedules are computed once in float64 numpy and stored as float32, so that the tiny differences
`1 - abar` near t=0 do not lose precision before the cast.

Samplers live in `gaussian_samplers.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

PREDICTIONS = ("eps", "v")


@flax.struct.dataclass
class GaussianSchedule:
    """Per-timestep constants of a Gaussian diffusion; every field is f32[T].

    A pytree of arrays, so it can be passed straight into jitted functions (T stays static through
    the shapes).
    """

    betas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    sqrt_alphas_cumprod: Array
    sqrt_one_minus_alphas_cumprod: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array
    posterior_mean_coef1: Array
    posterior_mean_coef2: Array

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def linear_betas(num_timesteps: int) -> np.ndarray:
    """DDPM linear schedule (Ho et al. 2020): 1e-4..0.02 at T=1000, scaled by 1000/T for other T."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(t: np.ndarray, num_timesteps: int, s: float = 0.008) -> np.ndarray:
    """abar(t) of Nichol & Dhariwal (2021): f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    f = lambda u: np.cos((u / num_timesteps + s) / (1.0 + s) * math.pi / 2) ** 2
    return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule betas, clipped at `max_beta`: the last ratio abar(T)/abar(T-1) is ~0."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64)
    abar = cosine_alphas_cumprod(steps, num_timesteps)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


# Explicit registry: configs name a schedule by key, never through getattr.
SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


def schedule_from_betas(betas: np.ndarray) -> GaussianSchedule:
    """All derived constants of Ho et al. (2020), eqs. 4 and 7, in float64, then cast to float32."""
    betas = np.asarray(betas, np.float64)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    # The posterior variance is 0 at t=0 (x_{-1} is x0 itself); log(0) would be -inf, so the log is
    # taken from the t=1 value there, as in the reference DDPM code. The sampler adds no noise at
    # t=0 anyway.
    log_var_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return GaussianSchedule(
        betas=f32(betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(abar_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
        posterior_variance=f32(posterior_variance),
        posterior_log_variance_clipped=f32(log_var_clipped),
        posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
    )


def make_schedule(kind: str, num_timesteps: int) -> GaussianSchedule:
    """Builds the schedule named `kind` (a key of SCHEDULES) with `num_timesteps` steps."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown diffusion schedule {kind!r}; choose one of {sorted(SCHEDULES)}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return schedule_from_betas(SCHEDULES[kind](num_timesteps))


def _at(arr_T: Array, t_B: Array, x: Array) -> Array:
    """arr_T[t_B] reshaped to [B, 1, ..., 1] so it broadcasts against x; computed in f32."""
    vals_B = jnp.take(arr_T, t_B.astype(jnp.int32), axis=0)
    return vals_B.reshape((t_B.shape[0],) + (1,) * (x.ndim - 1))


def check_prediction(prediction: str) -> None:
    """Raises ValueError naming a prediction type that is not in PREDICTIONS."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown diffusion prediction {prediction!r}; choose one of {list(PREDICTIONS)}"
        )


def q_sample(s: GaussianSchedule, x0: Array, t: Array, noise: Array) -> Array:
    """Draws x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given noise."""
    return (
        _at(s.sqrt_alphas_cumprod, t, x0) * x0 + _at(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior(s: GaussianSchedule, x0: Array, xt: Array, t: Array) -> tuple[Array, Array, Array]:
    """Mean, variance, clipped log variance of q(x_{t-1} | x_t, x0); variances are [B, 1, ...]."""
    mean = _at(s.posterior_mean_coef1, t, xt) * x0 + _at(s.posterior_mean_coef2, t, xt) * xt
    return mean, _at(s.posterior_variance, t, xt), _at(s.posterior_log_variance_clipped, t, xt)


def model_target(s: GaussianSchedule, x0: Array, t: Array, noise: Array, prediction: str) -> Array:
    """Regression target: the noise itself, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    return (
        _at(s.sqrt_alphas_cumprod, t, x0) * noise - _at(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0
    )


def predict_x0_eps(
    s: GaussianSchedule, xt: Array, t: Array, model_out: Array, prediction: str
) -> tuple[Array, Array]:
    """Inverts a model output into the implied clean sample x0 and noise eps (both in f32)."""
    check_prediction(prediction)
    xt = xt.astype(jnp.float32)
    model_out = model_out.astype(jnp.float32)
    sa = _at(s.sqrt_alphas_cumprod, t, xt)
    s1ma = _at(s.sqrt_one_minus_alphas_cumprod, t, xt)
    if prediction == "eps":
        eps = model_out
        x0 = (xt - s1ma * eps) / sa
    else:
        # (xt, v) is a rotation of (x0, eps) by the angle with cos = sqrt(abar): invert by the
        # transpose.
        x0 = sa * xt - s1ma * model_out
        eps = s1ma * xt + sa * model_out
    return x0, eps


def eps_from_x0(s: GaussianSchedule, xt: Array, t: Array, x0: Array) -> Array:
    """The noise consistent with (xt, x0); used to re-derive eps after x0 has been clipped."""
    return (xt - _at(s.sqrt_alphas_cumprod, t, xt) * x0) / _at(
        s.sqrt_one_minus_alphas_cumprod, t, xt
    )


# Loss weightings over timesteps: "uniform" (the simple DDPM loss) or "min_snr" (Hang et al. 2023,
# min-SNR-γ: each timestep's loss weighted as an x0-prediction loss clipped at SNR γ, which stops the
# nearly clean timesteps from dominating and speeds up convergence).
LOSS_WEIGHTINGS = ("uniform", "min_snr")


def min_snr_weight(s: GaussianSchedule, t: Array, prediction: str, gamma: float) -> Array:
    """Per-example weight of min-SNR-γ: min(SNR, γ) / SNR for eps-prediction, min(SNR, γ) /
    (SNR + 1) for v-prediction (SNR = abar / (1 − abar)): the loss then equals a γ-clipped
    SNR-weighted x0 error."""
    abar = s.alphas_cumprod[t]
    snr = abar / (1.0 - abar)
    clipped = jnp.minimum(snr, gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1.0)


def training_loss(
    s: GaussianSchedule,
    model_fn: ModelFn,
    x0: Array,
    key: Array,
    *,
    prediction: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
) -> tuple[Array, dict[str, Array]]:
    """Simple DDPM loss: t ~ U{0..T-1}, eps ~ N(0, I), MSE between model_fn(x_t, t) and the target,
    per example weighted by `weighting` (LOSS_WEIGHTINGS).

    The squared error is averaged over the non-batch axes first (per-example MSE), then over the
    batch. Returns (loss, aux) with aux = {"mse_per_example": f32[B], "t": i32[B]} (unweighted);
    the per-example values let callers plot the loss against t or reweight it.
    """
    check_prediction(prediction)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}")
    key_t, key_noise = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.randint(key_t, (batch,), 0, s.num_timesteps, dtype=jnp.int32)
    x0 = x0.astype(jnp.float32)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    xt = q_sample(s, x0, t, noise)
    out = model_fn(xt, t).astype(jnp.float32)  # models may run in bf16; the loss stays in f32
    target = model_target(s, x0, t, noise, prediction)
    sq_err = jnp.square(out - target).reshape(batch, -1)
    mse_per_example = jnp.mean(sq_err, axis=1)
    weight = 1.0
    if weighting == "min_snr":
        weight = min_snr_weight(s, t, prediction, min_snr_gamma)
    loss = jnp.mean(weight * mse_per_example)
    return loss, {"mse_per_example": mse_per_example, "t": t}


# --- classifier-free guidance ---------------------------------------------------------------------
#
# Design: the caller supplies ONE function `pair_fn(xt, t) -> (cond_out, uncond_out)`. How it
# produces both is up to the model: the efficient way (and the one a DiT should use) is a single
# forward pass on the batch doubled along axis 0, with the condition dropped (masked / null token)
# in the second half, then split in two:
#
#     def pair_fn(xt, t):
#         drop_B2 = jnp.repeat(jnp.array([False, True]), xt.shape[0])  # second half unconditional
#         out = dit.apply(params, jnp.concatenate([xt, xt]), jnp.concatenate([t, t]),
#                         cond=jnp.concatenate([cond, cond]), cond_drop=drop_B2)
#         return jnp.split(out, 2)
#
# `guided_model_fn(pair_fn, scale)` then is an ordinary `model_fn(xt, t)` that every sampler
# accepts. Guidance acts on the raw model output; since x0 and eps are linear in it, this is the
# same for eps- and v-prediction.
#
# Guidance interval (Kynkäänniemi et al. 2024): guidance at high noise pulls samples towards a few
# modes (less variety) and at low noise barely matters, so it may be applied only on a middle range
# of the chain; elsewhere the conditional output is used as is. The range is given as fractions of
# the forward process: timestep t (in [0, T-1]) is at time (t + 1) / T in (0, 1], and is guided
# when lo < (t + 1) / T <= hi. (0, 1) guides every step.

NO_GUIDANCE_INTERVAL = (0.0, 1.0)


def cfg_combine(cond_out: Array, uncond_out: Array, scale: float | Array) -> Array:
    """Classifier-free guidance: uncond + scale (cond - uncond); 0: uncond, 1: cond."""
    return uncond_out + scale * (cond_out - uncond_out)


def check_guidance_interval(interval: tuple[float, float]) -> None:
    """Raises ValueError unless interval = (lo, hi) with 0 <= lo < hi <= 1."""
    if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
        raise ValueError(
            f"guidance interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval}"
        )


def in_guidance_interval(t: Array, num_timesteps: int, interval: tuple[float, float]) -> Array:
    """bool[B]: whether timesteps t i32[B] lie in the guidance interval (lo, hi] (as fractions)."""
    # Compared as integers: for an integer n, n > x <=> n > floor(x) and n <= x <=> n <= floor(x).
    # The 1e-9 keeps a bound meant to be whole (0.29 * 100 = 28.999999999999996) whole.
    lo, hi = (math.floor(f * num_timesteps + 1e-9) for f in interval)
    tp1 = t.astype(jnp.int32) + 1
    return (tp1 > lo) & (tp1 <= hi)


def guided_model_fn(
    pair_fn: Callable[[Array, Array], tuple[Array, Array]],
    scale: float | Array,
    *,
    interval: tuple[float, float] = NO_GUIDANCE_INTERVAL,
    num_timesteps: int | None = None,
) -> ModelFn:
    """Turns `pair_fn(xt, t) -> (cond_out, uncond_out)` into a guided `model_fn(xt, t)`.

    With an `interval` other than (0, 1), steps outside it return cond_out unguided: t is a
    timestep of a `num_timesteps` chain (in_guidance_interval), or with num_timesteps=None a
    continuous time in [0, 1] (flow time, 1 = noise) guided when lo < t <= hi. Both branches are
    still computed there (pair_fn is one batched call, and t may differ across the batch); a
    sampler that wants to save them can branch on t itself.
    """
    interval = tuple(float(v) for v in interval)
    check_guidance_interval(interval)
    everywhere = interval == NO_GUIDANCE_INTERVAL

    def model_fn(xt: Array, t: Array) -> Array:
        cond_out, uncond_out = pair_fn(xt, t)
        guided = cfg_combine(cond_out, uncond_out, scale)
        if everywhere:  # today's behaviour, bit for bit
            return guided
        if num_timesteps is None:
            inside = (t > interval[0]) & (t <= interval[1])
        else:
            inside = in_guidance_interval(t, num_timesteps, interval)
        return jnp.where(inside.reshape((-1,) + (1,) * (xt.ndim - 1)), guided, cond_out)

    return model_fn
