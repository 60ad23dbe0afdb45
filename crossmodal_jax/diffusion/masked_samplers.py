"""MaskGIT-style confidence-unmasking sampler for the masked diffusion in `masked.py`.

Start from an all-masked sequence. At step k = 0..K-1 (progress r = (k+1)/K):
  1. call `logits_fn(x, rate_B)` with rate = the fraction of positions currently masked (the same
     conditioning as in training, see masked.py);
  2. draw a candidate token for every position (softmax with `temperature`; argmax at 0), never
     `mask_id` nor a `forbidden_ids` entry;
  3. confidence = log-prob of the candidate (+ choice_temperature (1 - r) Gumbel noise, MaskGIT's
     annealed randomness in the *order* of unmasking); already-unmasked positions get +inf, so they
     are kept and never re-masked;
  4. keep the n_k least confident positions masked, unmask the rest.

n_k = floor(L gamma(r)) with gamma(r) = alpha(r) of the named schedule (gamma(0) = 1, gamma(1) = 0;
MaskGIT's "linear" 1 - r and "cosine" cos(pi r / 2)), further capped at n_{k-1} - 1 so every step
unmasks at least one position until none is left: with K >= L all positions are unmasked after
min(K, L) steps; n_{K-1} = 0 always. The counts depend only on (L, K, schedule), so they are
tabulated in float64 numpy at trace time and the loop is one `lax.scan` body.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.diffusion.masked import (
    LogitsFn,
    MaskSchedule,
    flat_random,
    make_mask_schedule,
    suppress_ids,
)

Array = jax.Array


def masked_counts(length: int, num_steps: int, schedule: MaskSchedule | str) -> np.ndarray:
    """int32[K]: how many positions are still masked after each sampling step (see module doc)."""
    if length < 1 or num_steps < 1:
        raise ValueError(f"length and num_steps must be >= 1, got {length} and {num_steps}")
    s = make_mask_schedule(schedule) if isinstance(schedule, str) else schedule
    progress_K = np.arange(1, num_steps + 1, dtype=np.float64) / num_steps
    gamma_K = np.clip(np.asarray(s.alpha(progress_K), np.float64), 0.0, 1.0)
    # The 1e-9 keeps a whole count whole: 6 * (1 - 5/6) is 0.9999999999999998 in floats, which
    # floored to 0 committed two tokens at the fifth of 6 steps and none at the last.
    counts = np.floor(length * gamma_K + 1e-9).astype(np.int64)
    prev = length
    for k in range(num_steps):
        prev = counts[k] = max(min(counts[k], prev - 1), 0)
    counts[-1] = 0  # guards against alpha(1) rounding a hair above 0 for a custom schedule
    return counts.astype(np.int32)


def step_candidates(
    logits_fn: LogitsFn, x_BxL: Array, rate_B: Array, key: Array, *, banned, temperature: float
) -> tuple[Array, Array, Array]:
    """One step's draws: (candidate ids, their log-probs, one spare Gumbel per position).

    One flat Gumbel draw serves both the token choice (Gumbel-max = categorical sampling) and the
    confidence noise (an extra slot per position): independent, cheap to compile. The decoders of
    masked_decoding.py draw through this too, so one that reduces to MaskGIT gives its samples.
    """
    logits_BxLxV = suppress_ids(logits_fn(x_BxL, rate_B), banned)
    vocab = logits_BxLxV.shape[-1]
    gumbel_BxLxV1 = flat_random(jax.random.gumbel, key, (*x_BxL.shape, vocab + 1))
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    if temperature == 0:
        cand_BxL = jnp.argmax(logits_BxLxV, axis=-1)
    else:
        cand_BxL = jnp.argmax(logits_BxLxV / temperature + gumbel_BxLxV1[..., :-1], axis=-1)
    cand_BxL = cand_BxL.astype(jnp.int32)
    logp_BxL = jnp.take_along_axis(logp_BxLxV, cand_BxL[..., None], axis=-1)[..., 0]
    return cand_BxL, logp_BxL, gumbel_BxLxV1[..., -1]


def sample(
    logits_fn: LogitsFn,
    key: Array,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    num_steps: int,
    temperature: float = 1.0,
    schedule: str = "cosine",
    choice_temperature: float = 4.5,
    forbidden_ids: Sequence[int] | None = None,
) -> Array:
    """MaskGIT sampling; returns i32[batch_size, length] with no `mask_id` left.

    logits_fn(x_BxL int32, rate_B f32) -> f32[B, L, V]. Deterministic for a fixed key. Under jit,
    every argument but `key` (and whatever logits_fn closes over) must be static: bind them with
    functools.partial. choice_temperature=4.5 is MaskGIT's ImageNet value; 0 unmasks purely by
    confidence.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    counts_K = masked_counts(length, num_steps, schedule)
    before_K = np.concatenate([[length], counts_K[:-1]]).astype(np.int32)
    progress_K = np.arange(1, num_steps + 1, dtype=np.float32) / num_steps
    banned = (mask_id, *(forbidden_ids or ()))

    def step(x_BxL: Array, xs: tuple[Array, Array, Array, Array]) -> tuple[Array, None]:
        n_before, n_after, progress, step_key = xs
        rate_B = jnp.full((batch_size,), n_before / length, jnp.float32)
        cand_BxL, logp_BxL, noise_BxL = step_candidates(
            logits_fn, x_BxL, rate_B, step_key, banned=banned, temperature=temperature
        )
        conf_BxL = logp_BxL + choice_temperature * (1.0 - progress) * noise_BxL
        is_masked_BxL = x_BxL == mask_id
        conf_BxL = jnp.where(is_masked_BxL, conf_BxL, jnp.inf)
        # Rank positions by confidence (0 = most confident; ties broken by position, stable) and
        # unmask the top L - n_after. The L - n_before already-unmasked (+inf) ones are among them.
        order_BxL = jnp.argsort(-conf_BxL, axis=-1, stable=True)
        rank_BxL = jnp.argsort(order_BxL, axis=-1, stable=True)
        unmask_BxL = is_masked_BxL & (rank_BxL < length - n_after)
        return jnp.where(unmask_BxL, cand_BxL, x_BxL), None

    x0_BxL = jnp.full((batch_size, length), mask_id, jnp.int32)
    xs = (
        jnp.asarray(before_K),
        jnp.asarray(counts_K),
        jnp.asarray(progress_K),
        jax.random.split(key, num_steps),
    )
    x_BxL, _ = jax.lax.scan(step, x0_BxL, xs)
    return x_BxL
