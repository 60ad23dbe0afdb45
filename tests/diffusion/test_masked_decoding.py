"""Masked-diffusion decoders beside MaskGIT's: ReMDM remasking, semi-autoregressive blocks and
confidence-threshold parallel decoding, each checked on fixed table models whose behaviour is
known in closed form (point masses, per-position confidences, left-to-right chains)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import masked_decoding as mdec
from crossmodal_jax.diffusion import masked_samplers as ms

VOCAB, MASK = 7, 7  # real ids 0..6; the mask id is the logits' last entry
COMMON = dict(mask_id=MASK)


def _random_logits_fn():
    """Logits that depend on the current tokens (as in test_masked_diffusion)."""
    table = jnp.asarray(np.random.default_rng(42).normal(size=(VOCAB + 1, VOCAB + 1)), jnp.float32)

    def fn(x, rate):
        h = table[x] + jnp.cumsum(table[x], axis=1) * 0.3
        return h + rate[:, None, None]

    return fn


def _recording(fn, seen):
    """fn that also records (x, rate) of every call, in order, under jit and loops."""

    def wrapped(x, rate):
        jax.debug.callback(
            lambda *a: seen.append([np.asarray(v) for v in a]), x, rate, ordered=True
        )
        return fn(x, rate)

    return wrapped


def _states(seen, out):
    return [x for x, _ in seen] + [np.asarray(out)]


def _steps(states):
    """(state before, state after) of every step."""
    return zip(states[:-1], states[1:], strict=True)


def _biased_logits_fn():
    """The random model, but preferring the mask id and the forbidden ids 0, 1 overwhelmingly."""
    bias = jnp.zeros(VOCAB + 1).at[jnp.array([0, 1, MASK])].set(30.0)
    return lambda x, rate: _random_logits_fn()(x, rate) + bias


def _assert_finished(out):
    out = np.asarray(out)
    assert out.dtype == np.int32 and not np.isin(out, [0, 1, MASK]).any()


# --- ReMDM remasking ------------------------------------------------------------------------------


@pytest.mark.parametrize("length,steps,cap", [(6, 14, 1.0), (5, 3, 0.5)])
def test_remasking_follows_the_schedule_and_leaves_no_mask(length, steps, cap):
    seen = []
    out = mdec.remdm_sample(
        _recording(_biased_logits_fn(), seen), jax.random.key(4), batch_size=4, length=length,
        num_steps=steps, schedule="cosine", remask_cap=cap, temperature=1.0,
        forbidden_ids=(0, 1), **COMMON,
    )  # fmt: skip
    _assert_finished(out)
    states = _states(seen, out)
    counts = mdec.schedule_counts(length, steps, "cosine")
    assert len(seen) == steps
    for k in range(steps):
        np.testing.assert_array_equal((states[k + 1] == MASK).sum(1), [counts[k]] * 4)
    assert not (states[-1] == MASK).any()
    # Remasking happens where the schedule leaves room: some committed token is masked again.
    remasked = [((a != MASK) & (b == MASK)).any() for a, b in _steps(states)]
    assert any(remasked)


def test_remasking_picks_the_least_confident_committed_tokens():
    # Position confidences are fixed (one-hot logits of different heights): with cap 1, every
    # remask takes the committed token that was least sure when committed.
    heights = jnp.asarray([9.0, 1.0, 5.0, 3.0])
    target = jnp.asarray([2, 4, 6, 3])
    fn = lambda x, rate: heights[:, None] * jax.nn.one_hot(jnp.broadcast_to(target, x.shape), 8)
    seen = []
    out = mdec.remdm_sample(
        _recording(fn, seen), jax.random.key(0), batch_size=1, length=4, num_steps=8,
        schedule="linear", remask_cap=1.0, temperature=0.0, choice_temperature=0.0, **COMMON,
    )  # fmt: skip
    np.testing.assert_array_equal(out, target[None])
    states = _states(seen, out)
    for a, b in _steps(states):
        again = np.flatnonzero((a[0] != MASK) & (b[0] == MASK))
        kept = np.flatnonzero((a[0] != MASK) & (b[0] != MASK))
        if len(again) and len(kept):
            assert np.asarray(heights)[again].max() <= np.asarray(heights)[kept].min()


# --- semi-autoregressive blocks -------------------------------------------------------------------


def test_semi_ar_decodes_blocks_in_order_and_never_changes_a_finished_one():
    length, steps, block = 8, 6, 3  # blocks of 3, 3 and 2 positions, 2 steps each
    seen = []
    out = mdec.semi_ar_sample(
        _recording(_biased_logits_fn(), seen), jax.random.key(1), batch_size=3, length=length,
        num_steps=steps, block_size=block, schedule="cosine", forbidden_ids=(0, 1), **COMMON,
    )  # fmt: skip
    _assert_finished(out)
    states = _states(seen, out)
    lo_K, hi_K, _, _ = mdec.block_plan(length, steps, block, "cosine")
    assert len(seen) == len(lo_K) == steps
    for k, (lo, hi) in enumerate(zip(lo_K, hi_K, strict=True)):
        before, after = states[k], states[k + 1]
        np.testing.assert_array_equal(after[:, :lo], before[:, :lo])  # earlier blocks: fixed
        assert not (before[:, :lo] == MASK).any()  # ... and finished
        assert (after[:, hi:] == MASK).all()  # later blocks untouched
        np.testing.assert_array_equal(after[before != MASK], before[before != MASK])
        if k + 1 == len(lo_K) or lo_K[k + 1] != lo:  # the block's last step finishes it
            assert not (after[:, lo:hi] == MASK).any()


def test_without_remasking_or_blocks_both_are_maskgit():
    # Linear counts with K = L = 8 fall by one a step in both count tables (8 (1 - k/8) is exact
    # in floating point), and one block is the whole sequence: the samplers coincide.
    kw = dict(batch_size=4, length=8, num_steps=8, schedule="linear", temperature=1.0,
              choice_temperature=3.0, **COMMON)  # fmt: skip
    key, fn = jax.random.key(2), _random_logits_fn()
    ref = np.asarray(ms.sample(fn, key, **kw))
    np.testing.assert_array_equal(mdec.remdm_sample(fn, key, remask_cap=0.0, **kw), ref)
    np.testing.assert_array_equal(mdec.semi_ar_sample(fn, key, block_size=8, **kw), ref)


# --- confidence-threshold parallel decoding --------------------------------------------------------

TARGET = jnp.asarray([3, 1, 4, 1, 5, 6])


def _fixed_confidence_fn(probs):
    """The target token at position l with probability probs[l], the rest spread evenly."""
    p = np.asarray(probs, np.float64)
    height = jnp.asarray(np.log(p * (VOCAB - 1) / (1 - p)), jnp.float32)  # softmax over 7 ids
    return lambda x, rate: height[:, None] * jax.nn.one_hot(jnp.broadcast_to(TARGET, x.shape), 8)


def test_threshold_commits_every_sure_position_and_at_least_one():
    probs = [0.95, 0.3, 0.92, 0.5, 0.99, 0.2]
    seen = []
    out, steps = mdec.threshold_sample(
        _recording(_fixed_confidence_fn(probs), seen), jax.random.key(0), batch_size=2,
        length=6, num_steps=6, threshold=0.9, temperature=0.0, schedule="linear",
        return_steps=True, **COMMON,
    )  # fmt: skip
    states = _states(seen, out)
    committed = [np.flatnonzero((a[0] == MASK) & (b[0] != MASK)) for a, b in _steps(states)]
    # Step 1: the three above 0.9; then none is sure, so one a step, most confident first.
    assert [c.tolist() for c in committed] == [[0, 2, 4], [3], [1], [5]]
    np.testing.assert_array_equal(steps, [4, 4])
    np.testing.assert_array_equal(out, np.broadcast_to(TARGET, (2, 6)))


def test_threshold_with_a_confident_model_takes_fewer_steps_than_tokens():
    # A left-to-right chain: position l is sure once l - 1 is committed, unsure before.
    def chain(x, rate):
        ready = jnp.concatenate([jnp.ones_like(x[:, :1]), (x[:, :-1] != MASK)], axis=1)
        height = jnp.where(ready, 20.0, 0.5)[..., None]
        return height * jax.nn.one_hot(jnp.broadcast_to(TARGET, x.shape), 8)

    run = lambda fn: mdec.threshold_sample(
        fn, jax.random.key(3), batch_size=2, length=6, num_steps=6, threshold=0.9,
        temperature=0.0, return_steps=True, **COMMON,
    )  # fmt: skip
    out, steps = run(chain)
    np.testing.assert_array_equal(steps, [6, 6])  # one sure position a step
    np.testing.assert_array_equal(out, np.broadcast_to(TARGET, (2, 6)))
    out, steps = run(_fixed_confidence_fn([0.999] * 6))
    np.testing.assert_array_equal(steps, [1, 1])  # all sure at once: one model call
    np.testing.assert_array_equal(out, np.broadcast_to(TARGET, (2, 6)))


def test_threshold_never_falls_behind_the_schedule():
    # Nothing is ever sure, and only 2 steps for 6 tokens: the floor still finishes in time.
    # (The biased model, sure of the suppressed ids only, is just as unsure.)
    for fn in (_fixed_confidence_fn([0.2] * 6), _biased_logits_fn()):
        seen = []
        out, steps = mdec.threshold_sample(
            _recording(fn, seen), jax.random.key(0), batch_size=2, length=6, num_steps=2,
            threshold=0.9, temperature=1.0, forbidden_ids=(0, 1), return_steps=True, **COMMON,
        )  # fmt: skip
        _assert_finished(out)
        assert len(seen) == 2 and np.asarray(steps).tolist() == [2, 2]
        assert (seen[1][0] == MASK).sum(1).tolist() == [3, 3]  # linear: 3 of 6 after step 1


def test_bad_options_are_refused():
    fn = _random_logits_fn()
    kw = dict(batch_size=1, length=4, num_steps=2, **COMMON)
    with pytest.raises(ValueError, match="threshold"):
        mdec.threshold_sample(fn, jax.random.key(0), threshold=1.5, **kw)
    with pytest.raises(ValueError, match="remask_cap"):
        mdec.remdm_sample(fn, jax.random.key(0), remask_cap=-0.1, **kw)
    with pytest.raises(ValueError, match="block_size"):
        mdec.semi_ar_sample(fn, jax.random.key(0), block_size=0, **kw)
