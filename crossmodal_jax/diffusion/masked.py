"""Absorbing-state ("masked") discrete diffusion over token ids as pure JAX functions.

Forward process (Austin et al. 2021; MDLM, Sahoo et al. 2024): continuous time t in [0, 1], t=0
clean, t=1 everything masked. Each token is independently still itself with probability alpha(t)
and has been replaced by the absorbing id `mask_id` with probability

    mask_rate(t) = 1 - alpha(t),     alpha(0) = 1, alpha(1) = 0, alpha decreasing.

Loss (MDLM continuous-time ELBO, SUBS parameterisation): with a model p(x0 | xt) that never predicts
`mask_id` and copies unmasked tokens,

    -log p(x0) <= E_t [ w(t) sum_l [xt_l = mask] -log p(x0_l | xt) ],   w(t) = -alpha'(t) / (1 - alpha(t)),

so w(t) = 1/t for the linear schedule alpha = 1 - t and (pi/2) cot(pi t / 4) for the cosine one.

Conditioning convention: the model function is `logits_fn(xt_BxL, rate_B) -> f32[B, L, V]` where
`rate_B` is the MASK RATE 1 - alpha(t) of each example (equal to t for the linear schedule), not t
itself. The masked-diffusion posterior depends on t only through alpha(t), so conditioning on the
rate loses nothing, and it lets the sampler (masked_samplers.py) pick any unmasking schedule and
simply tell the model the fraction still masked: a model trained with one schedule can be sampled
with another.

Sampling (MaskGIT-style confidence unmasking) lives in `masked_samplers.py`; remasking,
semi-autoregressive and confidence-threshold decoding in `masked_decoding.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# logits_fn(xt_BxL int32, rate_B f32) -> logits f32[B, L, V]
LogitsFn = Callable[[Array, Array], Array]

# Large finite negative for suppressed logits: -inf would give NaN in (-inf) - (-inf) and in
# gradients of rows where every entry is suppressed.
NEG_INF = -1e9


def flat_random(sampler: Callable[..., Array], key: Array, shape: tuple[int, ...]) -> Array:
    """sampler(key, (n,)) reshaped to `shape`: same distribution, but on CPU XLA compiles a
    multi-dimensional threefry draw ~5x slower than a flat one (seconds per call site)."""
    return sampler(key, (int(np.prod(shape)),)).reshape(shape)


def _xp(t):
    """numpy for numpy/Python inputs (the sampler tabulates counts in float64), jnp otherwise."""
    return np if isinstance(t, np.ndarray | np.generic | float | int) else jnp


# Each schedule is written once, array-module agnostic. 1 - alpha has its own stable form: the
# cosine 1 - cos(pi t / 2) loses all f32 precision near t=0, where the ELBO weight ~ 1/t is large.
def _linear_alpha(t):
    return 1.0 - t


def _linear_dalpha_dt(t):
    return -_xp(t).ones_like(t)


def _linear_one_minus_alpha(t):
    return t


def _cosine_alpha(t):
    xp = _xp(t)
    return xp.cos(0.5 * np.pi * t)


def _cosine_dalpha_dt(t):
    xp = _xp(t)
    return -0.5 * np.pi * xp.sin(0.5 * np.pi * t)


def _cosine_one_minus_alpha(t):
    xp = _xp(t)
    return 2.0 * xp.sin(0.25 * np.pi * t) ** 2  # 1 - cos(2x) = 2 sin^2(x)


# "sine": mask rate sin(pi t / 2), i.e. MaskGIT's training ratio cos(pi r / 2) with r = 1 - t:
# t ~ U(0, 1) then masks 64 % of the tokens on average (linear 50 %, cosine 36 %).
def _sine_alpha(t):
    return 1.0 - _xp(t).sin(0.5 * np.pi * t)


def _sine_dalpha_dt(t):
    return -0.5 * np.pi * _xp(t).cos(0.5 * np.pi * t)


def _sine_one_minus_alpha(t):
    return _xp(t).sin(0.5 * np.pi * t)


@dataclasses.dataclass(frozen=True)
class MaskSchedule:
    """alpha(t) = P(token still unmasked at time t), its derivative and a stable 1 - alpha(t).

    Frozen and hashable (its fields are module-level functions), so it can be a static argument of
    a jitted function or simply be closed over.
    """

    name: str
    alpha: Callable[[Array], Array]
    dalpha_dt: Callable[[Array], Array]
    one_minus_alpha: Callable[[Array], Array]


# Explicit registry: configs name a schedule by key, never through getattr.
MASK_SCHEDULES: dict[str, MaskSchedule] = {
    "linear": MaskSchedule("linear", _linear_alpha, _linear_dalpha_dt, _linear_one_minus_alpha),
    "cosine": MaskSchedule("cosine", _cosine_alpha, _cosine_dalpha_dt, _cosine_one_minus_alpha),
    "sine": MaskSchedule("sine", _sine_alpha, _sine_dalpha_dt, _sine_one_minus_alpha),
}

# How training_loss weights each example's masked cross-entropy:
# - "elbo": MDLM, w(t) * sum over masked / L: an unbiased bound on the NLL, which weights
#   lightly-masked examples most (w ~ 1/t);
# - "masked_mean": MaskGIT, the plain mean CE over the masked positions of each example: every
#   mask rate counts alike, so heavily-masked states (what conditional sampling starts from and
#   where the condition matters most) get their share of the gradient.
LOSS_WEIGHTINGS = ("elbo", "masked_mean")


def make_mask_schedule(name: str) -> MaskSchedule:
    """The schedule registered under `name` in MASK_SCHEDULES."""
    if name not in MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {name!r}; choose one of {sorted(MASK_SCHEDULES)}")
    return MASK_SCHEDULES[name]


def _resolve(schedule: MaskSchedule | str) -> MaskSchedule:
    return make_mask_schedule(schedule) if isinstance(schedule, str) else schedule


def mask_rate(schedule: MaskSchedule | str, t: Array) -> Array:
    """1 - alpha(t): the probability that a token is masked at time t (f32)."""
    return _resolve(schedule).one_minus_alpha(jnp.asarray(t, jnp.float32))


def loss_weight(schedule: MaskSchedule | str, t: Array) -> Array:
    """MDLM ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)); 1/t (linear), (pi/2) cot(pi t/4) (cosine).

    Diverges like 1/t at t=0; the denominator is floored at 1e-12 so t=0 gives a large finite value.
    Callers should keep t >= t_min > 0 (training_loss does).
    """
    s = _resolve(schedule)
    t = jnp.asarray(t, jnp.float32)
    return -s.dalpha_dt(t) / jnp.maximum(s.one_minus_alpha(t), 1e-12)


def forward_mask(
    schedule: MaskSchedule | str,
    x0_BxL: Array,
    t_B: Array,
    key: Array,
    *,
    mask_id: int,
    unit_ids_BxL: Array | None = None,
    unit_prob: float = 0.0,
) -> tuple[Array, Array]:
    """Draws xt ~ q(xt | x0): each token becomes `mask_id` w.p. mask_rate(t_b).

    Tokens are masked independently, except that with `unit_ids_BxL` (e.g. the word each byte
    belongs to) a fraction `unit_prob` of the examples is masked unit by unit: all tokens of a
    unit share one uniform draw. Every token is still masked w.p. mask_rate(t_b), so the
    per-token loss weights stay valid; what changes is that whole words are hidden together,
    the states in which a word must be read from the condition rather than spelled from its
    other letters. Returns (xt_BxL with x0's dtype, is_masked_BxL bool).
    """
    rate_Bx1 = mask_rate(schedule, t_B)[:, None]
    if unit_ids_BxL is None or unit_prob <= 0.0:
        u_BxL = flat_random(jax.random.uniform, key, x0_BxL.shape)
    else:
        key_tok, key_unit, key_pick = jax.random.split(key, 3)
        per_unit_BxL = flat_random(jax.random.uniform, key_unit, x0_BxL.shape)  # unit ids < L
        u_unit_BxL = jnp.take_along_axis(per_unit_BxL, unit_ids_BxL.astype(jnp.int32), axis=1)
        by_unit_B = flat_random(jax.random.uniform, key_pick, t_B.shape) < unit_prob
        u_BxL = jnp.where(
            by_unit_B[:, None], u_unit_BxL, flat_random(jax.random.uniform, key_tok, x0_BxL.shape)
        )
    is_masked_BxL = u_BxL < rate_Bx1
    xt_BxL = jnp.where(is_masked_BxL, jnp.asarray(mask_id, x0_BxL.dtype), x0_BxL)
    return xt_BxL, is_masked_BxL


def sample_times(key: Array, batch: int, *, t_min: float, low_discrepancy: bool) -> Array:
    """t ~ U(t_min, 1) per example; low-discrepancy: one uniform offset plus a stride of 1/B.

    The low-discrepancy draw (Kingma et al. 2021, as in MDLM) keeps every t marginally uniform but
    spreads the batch evenly over [t_min, 1], which cuts the variance of the 1/t-weighted loss.
    """
    if low_discrepancy:
        u0 = jax.random.uniform(key, (), jnp.float32)
        u_B = jnp.mod(u0 + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    else:
        u_B = jax.random.uniform(key, (batch,), jnp.float32)
    return t_min + (1.0 - t_min) * u_B


def suppress_ids(logits: Array, ids: tuple[int, ...]) -> Array:
    """Sets the logits of `ids` (those inside the vocabulary) to NEG_INF, in f32."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    ids = sorted({i for i in ids if 0 <= i < vocab})
    if not ids:
        return logits
    bias_V = np.zeros((vocab,), np.float32)
    bias_V[ids] = NEG_INF
    # where() rather than + bias, so a logit of +1e9 cannot cancel the suppression.
    return jnp.where(bias_V < 0, NEG_INF, logits)


def training_loss(
    schedule: MaskSchedule | str,
    logits_fn: LogitsFn,
    x0_BxL: Array,
    key: Array,
    *,
    mask_id: int,
    t_min: float = 1e-3,
    low_discrepancy: bool = True,
    weighting: str = "elbo",
    unit_ids_BxL: Array | None = None,
    unit_prob: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """MDLM loss: mean_b w(t_b) * (1/L) sum_l [xt_bl = mask] * CE(logits_bl, x0_bl).

    weighting="masked_mean" (see LOSS_WEIGHTINGS) instead averages each example's CE over its
    masked positions, without w(t).

    t_b ~ U(t_min, 1) (see sample_times), xt = forward_mask(x0, t), logits = logits_fn(xt,
    mask_rate(t)). The `mask_id` logit is suppressed before the softmax (SUBS: the clean data never
    contains the mask token, so the model should put no mass on it). t >= t_min keeps w(t) finite
    (at most 1/t_min for linear, ~2/t_min for cosine). Normalising by L rather than by the masked
    count keeps the estimator unbiased for the ELBO per token. `unit_ids_BxL`/`unit_prob`: whole
    units (words) masked together in some examples (see forward_mask).

    Returns (loss, metrics) with scalar metrics "masked_ce" and "masked_accuracy" (unweighted, over
    masked positions) and "mask_fraction". Randomness: key -> (key_t, key_mask) by jax.random.split.
    """
    s = _resolve(schedule)
    key_t, key_mask = jax.random.split(key)
    batch, length = x0_BxL.shape
    t_B = sample_times(key_t, batch, t_min=t_min, low_discrepancy=low_discrepancy)
    xt_BxL, is_masked_BxL = forward_mask(
        s, x0_BxL, t_B, key_mask, mask_id=mask_id, unit_ids_BxL=unit_ids_BxL, unit_prob=unit_prob
    )
    logits_BxLxV = suppress_ids(logits_fn(xt_BxL, mask_rate(s, t_B)), (mask_id,))
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    ce_BxL = -jnp.take_along_axis(logp_BxLxV, x0_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]
    masked_BxL = is_masked_BxL.astype(jnp.float32)
    masked_ce_B = jnp.sum(masked_BxL * ce_BxL, axis=1)
    if weighting == "elbo":
        loss = jnp.mean(loss_weight(s, t_B) * masked_ce_B / length)
    elif weighting == "masked_mean":
        loss = jnp.mean(masked_ce_B / jnp.maximum(jnp.sum(masked_BxL, axis=1), 1.0))
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}")

    num_masked = jnp.maximum(jnp.sum(masked_BxL), 1.0)  # a batch may (rarely) have none
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == x0_BxL).astype(jnp.float32)
    metrics = {
        "masked_ce": jnp.sum(masked_BxL * ce_BxL) / num_masked,
        "masked_accuracy": jnp.sum(masked_BxL * correct_BxL) / num_masked,
        "mask_fraction": jnp.mean(masked_BxL),
    }
    return loss, metrics


# --- classifier-free guidance ---------------------------------------------------------------------
#
# As in gaussian.py: the model produces conditional and unconditional logits (best in one pass on a
# doubled batch with the condition dropped in the second half) and the sampler gets the combined
# logits through an ordinary logits_fn. Guidance on logits equals guidance on log-probabilities up
# to a per-position constant, which the softmax ignores.


def cfg_logits(cond_logits: Array, uncond_logits: Array, scale: float | Array) -> Array:
    """Classifier-free guidance on logits: uncond + scale (cond - uncond); 0: uncond, 1: cond."""
    cond_logits = cond_logits.astype(jnp.float32)
    uncond_logits = uncond_logits.astype(jnp.float32)
    return uncond_logits + scale * (cond_logits - uncond_logits)


def guided_logits_fn(
    pair_fn: Callable[[Array, Array], tuple[Array, Array]], scale: float | Array
) -> LogitsFn:
    """Turns `pair_fn(xt, rate) -> (cond_logits, uncond_logits)` into a guided `logits_fn`."""

    def logits_fn(xt_BxL: Array, rate_B: Array) -> Array:
        cond, uncond = pair_fn(xt_BxL, rate_B)
        return cfg_logits(cond, uncond, scale)

    return logits_fn
