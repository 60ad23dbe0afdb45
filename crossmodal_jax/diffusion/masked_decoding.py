"""Masked-diffusion decoders beside MaskGIT's (`masked_samplers.sample`), and the table naming them.

Every decoder takes MaskGIT's model function, `logits_fn(x_BxL, rate_B) -> f32[B, L, V]` with rate
the fraction of positions masked (masked.py), draws candidates the same way (softmax with
`temperature`, argmax at 0; never `mask_id` nor a `forbidden_ids` entry), scores them by their
log-probability, and returns i32[B, L] with no `mask_id` left. They are pure and jit-compatible:
every argument but `key` is static (bind it with functools.partial). Classifier-free guidance
arrives, as for MaskGIT, already combined inside `logits_fn` (masked.guided_logits_fn).

- `remdm_sample`: ReMDM remasking (Wang, Schiff, Sahoo & Kuleshov 2025, "Remasking Discrete
  Diffusion Models with Inference-Time Scaling", arXiv:2503.00307): committed tokens may be masked
  again and re-predicted with more context.
- `semi_ar_sample`: semi-autoregressive block decoding (as in LLaDA and Fast-dLLM): blocks of
  `block_size` positions, left to right, each by MaskGIT-style steps; earlier blocks stay fixed.
- `threshold_sample`: confidence-threshold parallel decoding (Fast-dLLM, Wu et al. 2025): each
  step commits every masked position at least `threshold` sure, at least one, and stops as soon as
  nothing is masked, so a caption takes fewer model calls than it has tokens.

`MASKED_SAMPLERS` maps the config's `sample.sampler` to a decoder and the config keys it reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.diffusion import masked_samplers
from crossmodal_jax.diffusion.masked import (
    LogitsFn,
    MaskSchedule,
    make_mask_schedule,
)
from crossmodal_jax.diffusion.masked_samplers import masked_counts, step_candidates

Array = jax.Array


def _candidates(
    logits_fn: LogitsFn, x_BxL: Array, key: Array, *, mask_id: int, banned, temperature: float
) -> tuple[Array, Array, Array]:
    """MaskGIT's draws (masked_samplers.step_candidates) at the state's own masking rate."""
    rate_B = jnp.sum(x_BxL == mask_id, axis=1).astype(jnp.float32) / x_BxL.shape[1]
    return step_candidates(logits_fn, x_BxL, rate_B, key, banned=banned, temperature=temperature)


def _top(score_BxL: Array, eligible_BxL: Array, k_B: Array) -> Array:
    """bool[B, L]: the k_b highest-scoring eligible positions of each row (ties: lower position)."""
    score_BxL = jnp.where(eligible_BxL, score_BxL, -jnp.inf)
    order_BxL = jnp.argsort(-score_BxL, axis=-1, stable=True)
    rank_BxL = jnp.argsort(order_BxL, axis=-1, stable=True)
    return eligible_BxL & (rank_BxL < jnp.asarray(k_B)[..., None])


def _check(temperature: float, num_steps: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


# ------------------------------------------------------------------------------------ remasking


def schedule_counts(length: int, num_steps: int, schedule: MaskSchedule | str) -> np.ndarray:
    """int32[K]: floor(L alpha((k+1)/K)), the masked count after each step, without MaskGIT's
    one-per-step cap: with more steps than tokens, the steps where the schedule commits nothing
    new are spent re-deciding remasked tokens (ReMDM's inference-time scaling). Ends at 0.

    The floor forgives 1e-9: 6 (1 - 5/6) is 0.99999999999999978 in float64, and a plain floor
    (as `masked_counts` has it) commits two tokens at step 5 of 6 and none at step 6."""
    if length < 1 or num_steps < 1:
        raise ValueError(f"length and num_steps must be >= 1, got {length} and {num_steps}")
    s = make_mask_schedule(schedule) if isinstance(schedule, str) else schedule
    gamma_K = np.asarray(s.alpha(np.arange(1, num_steps + 1, dtype=np.float64) / num_steps))
    counts = np.floor(length * np.clip(gamma_K, 0.0, 1.0) + 1e-9).astype(np.int64)
    counts = np.minimum.accumulate(np.minimum(counts, length))  # never more masked than before
    counts[-1] = 0
    return counts.astype(np.int32)


def remdm_sample(
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
    remask_cap: float = 0.1,
    forbidden_ids: Sequence[int] | None = None,
) -> Array:
    """ReMDM-cap remasking on MaskGIT's confidence ordering; i32[batch_size, length], no mask.

    ReMDM's posterior lets a committed token return to the mask with probability sigma_t while
    keeping the marginals of the forward process; its "cap" strategy takes
    sigma_t = min(eta_cap, sigma_max), sigma_max = min(1, (1 - alpha_s) / alpha_t). With n_t
    tokens masked before the step and n_s after it (`schedule_counts`), a step here masks again
    r = min(eta_cap * (L - n_t), n_s) committed tokens (eta_cap * (L - n_t) rounded
    stochastically, right on average) and commits n_t - n_s + r masked ones, so n_s stay masked
    as the schedule says.
    At the last step n_s = 0, so sigma_max = 0: nothing is remasked and no mask is left.

    Which tokens: the masked ones of highest confidence are committed (MaskGIT, with
    `choice_temperature` Gumbel noise annealed over the steps), and the committed ones of lowest
    confidence when they were committed are remasked (ReMDM-conf's preference; the model's
    outputs at unmasked positions are untrained, so the confidence is the one stored then). A
    token remasked at a step cannot be committed again in the same step, as in ReMDM.
    `remask_cap` = 0 is exactly MaskGIT wherever the two count tables agree (e.g. linear,
    K = L = 8).
    """
    _check(temperature, num_steps)
    if not 0.0 <= remask_cap <= 1.0:
        raise ValueError(f"remask_cap must be in [0, 1], got {remask_cap}")
    counts_K = schedule_counts(length, num_steps, schedule)
    before_K = np.concatenate([[length], counts_K[:-1]]).astype(np.int32)
    progress_K = np.arange(1, num_steps + 1, dtype=np.float32) / num_steps
    banned = (mask_id, *(forbidden_ids or ()))

    def step(carry: tuple[Array, Array], xs) -> tuple[tuple[Array, Array], None]:
        x_BxL, saved_BxL = carry
        n_before, n_after, progress, step_key = xs
        cand_BxL, logp_BxL, noise_BxL = _candidates(
            logits_fn, x_BxL, step_key, mask_id=mask_id, banned=banned, temperature=temperature
        )
        is_masked_BxL = x_BxL == mask_id
        # Stochastic rounding of eta * committed; its uniforms come from a key MaskGIT never uses.
        u_B = jax.random.uniform(jax.random.fold_in(step_key, 1), (batch_size,))
        remask_B = jnp.floor(remask_cap * (length - n_before) + u_B).astype(jnp.int32)
        remask_B = jnp.minimum(remask_B, n_after)  # sigma_t <= sigma_max
        conf_BxL = logp_BxL + choice_temperature * (1.0 - progress) * noise_BxL
        commit_BxL = _top(conf_BxL, is_masked_BxL, n_before - n_after + remask_B)
        again_BxL = _top(-saved_BxL, ~is_masked_BxL, remask_B)
        x_BxL = jnp.where(commit_BxL, cand_BxL, x_BxL)
        x_BxL = jnp.where(again_BxL, jnp.int32(mask_id), x_BxL)
        return (x_BxL, jnp.where(commit_BxL, logp_BxL, saved_BxL)), None

    x0_BxL = jnp.full((batch_size, length), mask_id, jnp.int32)
    saved0_BxL = jnp.zeros((batch_size, length), jnp.float32)
    xs = (before_K, counts_K, progress_K, jax.random.split(key, num_steps))
    (x_BxL, _), _ = jax.lax.scan(step, (x0_BxL, saved0_BxL), jax.tree.map(jnp.asarray, xs))
    return x_BxL


# ------------------------------------------------------------------------ semi-autoregressive


def block_plan(length: int, num_steps: int, block_size: int, schedule: MaskSchedule | str):
    """Per step (numpy): the block [lo, hi) it decodes, how many of its positions it commits, and
    its progress within the block. Blocks of `block_size` (the last one may be shorter) get
    max(1, num_steps // blocks) MaskGIT steps each (`masked_counts`), so every block is finished
    before the next starts and the model is called at most max(num_steps, blocks) times."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    starts = range(0, length, block_size)
    per_block = max(1, num_steps // len(starts))
    lo, hi, commit, progress = [], [], [], []
    for start in starts:
        size = min(block_size, length - start)
        counts = masked_counts(size, per_block, schedule)
        before = np.concatenate([[size], counts[:-1]])
        lo += [start] * per_block
        hi += [start + size] * per_block
        commit += list(before - counts)
        progress += list(np.arange(1, per_block + 1) / per_block)
    as_i32 = lambda v: np.asarray(v, np.int32)
    return as_i32(lo), as_i32(hi), as_i32(commit), np.asarray(progress, np.float32)


def semi_ar_sample(
    logits_fn: LogitsFn,
    key: Array,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    num_steps: int,
    block_size: int = 8,
    temperature: float = 1.0,
    schedule: str = "cosine",
    choice_temperature: float = 4.5,
    forbidden_ids: Sequence[int] | None = None,
) -> Array:
    """Semi-autoregressive block decoding; returns i32[batch_size, length] with no mask left.

    The model sees the whole sequence at every step (later blocks still masked, earlier ones
    final), but only the current block's masked positions may be committed, the most confident
    first (MaskGIT's rule and noise, `block_plan` for the counts). Left to right suits captions:
    without blocks the easy end and pad tokens are committed first, and the length of the
    caption is fixed before its words. A block as long as the sequence is exactly MaskGIT.
    """
    _check(temperature, num_steps)
    lo_K, hi_K, commit_K, progress_K = block_plan(length, num_steps, block_size, schedule)
    banned = (mask_id, *(forbidden_ids or ()))
    pos_L = jnp.arange(length)

    def step(x_BxL: Array, xs) -> tuple[Array, None]:
        lo, hi, n_commit, progress, step_key = xs
        cand_BxL, logp_BxL, noise_BxL = _candidates(
            logits_fn, x_BxL, step_key, mask_id=mask_id, banned=banned, temperature=temperature
        )
        conf_BxL = logp_BxL + choice_temperature * (1.0 - progress) * noise_BxL
        open_BxL = (x_BxL == mask_id) & ((pos_L >= lo) & (pos_L < hi))[None]
        commit_BxL = _top(conf_BxL, open_BxL, jnp.full((batch_size,), n_commit))
        return jnp.where(commit_BxL, cand_BxL, x_BxL), None

    x0_BxL = jnp.full((batch_size, length), mask_id, jnp.int32)
    keys = jax.random.split(key, len(lo_K))
    xs = (*map(jnp.asarray, (lo_K, hi_K, commit_K, progress_K)), keys)
    x_BxL, _ = jax.lax.scan(step, x0_BxL, xs)
    return x_BxL


# -------------------------------------------------------------------- threshold, parallel


def threshold_sample(
    logits_fn: LogitsFn,
    key: Array,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    num_steps: int,
    threshold: float = 0.9,
    temperature: float = 1.0,
    schedule: str = "linear",
    forbidden_ids: Sequence[int] | None = None,
    return_steps: bool = False,
) -> Array | tuple[Array, Array]:
    """Confidence-threshold parallel decoding; i32[batch_size, length] with no mask left.

    Each step commits every masked position whose candidate has probability >= `threshold`
    (Fast-dLLM's rule), and at least max(1, what keeps it on `schedule`'s counts for `num_steps`
    steps), the most confident first: it is never behind the schedule, so no mask is left after
    at most `num_steps` steps. A `lax.while_loop` stops as soon as no example has
    a mask left; a finished example's later steps change nothing. return_steps=True also returns
    i32[batch_size], the steps in which each example still had a mask (its model calls if
    decoded alone); the batch called the model max() of them times (its NFE).
    """
    _check(temperature, num_steps)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    floor_K = jnp.asarray(schedule_counts(length, num_steps, schedule))  # most masked after k
    banned = (mask_id, *(forbidden_ids or ()))
    keys = jax.random.split(key, num_steps)

    def running(state: tuple[Array, Array, Array]) -> Array:
        k, x_BxL, _ = state
        return (k < num_steps) & jnp.any(x_BxL == mask_id)

    def step(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        k, x_BxL, steps_B = state
        cand_BxL, logp_BxL, _ = _candidates(
            logits_fn, x_BxL, keys[k], mask_id=mask_id, banned=banned, temperature=temperature
        )
        is_masked_BxL = x_BxL == mask_id
        n_masked_B = jnp.sum(is_masked_BxL, axis=1)
        sure_B = jnp.sum(is_masked_BxL & (jnp.exp(logp_BxL) >= threshold), axis=1)
        # The sure positions are exactly the n_sure most confident masked ones, so one top-n
        # covers the threshold rule, the at-least-one rule and the schedule's floor.
        n_B = jnp.maximum(jnp.maximum(sure_B, 1), n_masked_B - floor_K[k])
        commit_BxL = _top(logp_BxL, is_masked_BxL, jnp.minimum(n_B, n_masked_B))
        steps_B = steps_B + (n_masked_B > 0).astype(jnp.int32)
        return k + 1, jnp.where(commit_BxL, cand_BxL, x_BxL), steps_B

    x0_BxL = jnp.full((batch_size, length), mask_id, jnp.int32)
    state = (jnp.int32(0), x0_BxL, jnp.zeros((batch_size,), jnp.int32))
    _, x_BxL, steps_B = jax.lax.while_loop(running, step, state)
    return (x_BxL, steps_B) if return_steps else x_BxL


# ------------------------------------------------------------------------------------ the table


@dataclasses.dataclass(frozen=True)
class MaskedSampler:
    """A decoder and the `sample.*` config keys it reads beyond the shared ones (`steps`,
    `temperature`), each passed as the keyword argument of the same name."""

    fn: Callable[..., Array]
    options: tuple[str, ...]


MASKED_SAMPLERS: dict[str, MaskedSampler] = {
    "maskgit": MaskedSampler(masked_samplers.sample, ("schedule", "choice_temperature")),
    "remdm": MaskedSampler(remdm_sample, ("schedule", "choice_temperature", "remask_cap")),
    "semi_ar": MaskedSampler(semi_ar_sample, ("schedule", "choice_temperature", "block_size")),
    "threshold": MaskedSampler(threshold_sample, ("schedule", "threshold")),
}
