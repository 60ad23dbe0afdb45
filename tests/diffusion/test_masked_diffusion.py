"""Masked (absorbing-state) diffusion: schedules, forward masking, MDLM loss, guidance, sampler.

Reference values come from the closed forms (MDLM, Sahoo et al. 2024; MaskGIT, Chang et al. 2022)
computed in float64 numpy, never from the code under test.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import masked as md
from crossmodal_jax.diffusion import masked_samplers as ms

KINDS = ("linear", "cosine")
VOCAB, MASK = 7, 7  # real ids 0..6; the mask id sits right after them, as the logits' last entry


def _np_rate(kind, t):
    t = np.asarray(t, np.float64)
    return t if kind == "linear" else 1.0 - np.cos(np.pi * t / 2)


def _t_from_rate(kind, rate):
    rate = np.asarray(rate, np.float64)
    return rate if kind == "linear" else 2.0 / np.pi * np.arccos(1.0 - rate)


# --- schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_closed_forms(kind):
    s = md.make_mask_schedule(kind)
    t = np.linspace(0.01, 1.0, 50)
    np.testing.assert_allclose(md.mask_rate(s, t), _np_rate(kind, t), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s.alpha(jnp.asarray(t)), 1 - _np_rate(kind, t), atol=1e-6)
    np.testing.assert_allclose(md.mask_rate(kind, [0.0, 1.0]), [0.0, 1.0], atol=1e-7)
    # w(t) = -alpha'/(1 - alpha): 1/t, and (pi/2) sin(pi t/2) / (1 - cos(pi t/2)) = (pi/2) cot(pi t/4)
    expected = 1 / t if kind == "linear" else np.pi / 2 / np.tan(np.pi * t / 4)
    np.testing.assert_allclose(md.loss_weight(s, t), expected, rtol=1e-5)
    # Derivative matches a finite difference of alpha.
    h = 1e-4
    fd = (np.asarray(s.alpha(t + h)) - np.asarray(s.alpha(t - h))) / (2 * h)
    np.testing.assert_allclose(s.dalpha_dt(jnp.asarray(t)), fd, atol=1e-5)


def test_cosine_rate_is_accurate_near_zero():
    # f32 1 - cos(x) is 0 for tiny x; the stable form keeps the ~2/t weight right.
    t = 1e-4
    assert float(md.mask_rate("cosine", t)) == pytest.approx(_np_rate("cosine", t), rel=1e-4)
    assert float(md.loss_weight("cosine", t)) == pytest.approx(2 / t, rel=1e-4)
    assert np.isfinite(float(md.loss_weight("linear", 0.0)))


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match=r"'bogus'.*cosine.*linear"):
        md.make_mask_schedule("bogus")


@pytest.mark.parametrize("kind", KINDS)
def test_forward_mask_rate_follows_schedule(kind):
    t_B = jnp.array([0.05, 0.3, 0.6, 0.95])
    x0 = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 20000)), jnp.int32)
    xt, is_masked = md.forward_mask(kind, x0, t_B, jax.random.key(1), mask_id=MASK)
    np.testing.assert_allclose(is_masked.mean(axis=1), _np_rate(kind, t_B), atol=0.012)
    np.testing.assert_array_equal(xt, np.where(is_masked, MASK, x0))
    assert xt.dtype == x0.dtype


def test_low_discrepancy_times_are_evenly_spread():
    t = np.sort(np.asarray(md.sample_times(jax.random.key(3), 8, t_min=0.1, low_discrepancy=True)))
    assert 0.1 <= t[0] and t[-1] < 1.0
    np.testing.assert_allclose(np.diff(t), 0.9 / 8, rtol=1e-4)


# --- loss -----------------------------------------------------------------------------------------


def _record_calls(logits_BxLxV, calls):
    """logits_fn returning fixed logits and recording its inputs (eager use only)."""

    def fn(xt, rate):
        calls.append((np.asarray(xt), np.asarray(rate)))
        return logits_BxLxV

    return fn


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_matches_hand_computation(kind):
    rng = np.random.default_rng(0)
    batch, length = 4, 6
    x0 = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
    logits = rng.normal(size=(batch, length, VOCAB + 1)).astype(np.float32)
    logits[..., MASK] = 5.0  # a big mask logit that the loss must ignore
    calls = []
    loss, metrics = md.training_loss(
        kind, _record_calls(jnp.asarray(logits), calls), jnp.asarray(x0), jax.random.key(7),
        mask_id=MASK, t_min=0.01,
    )  # fmt: skip
    ((xt, rate),) = calls
    is_masked = xt == MASK
    assert is_masked.any() and not is_masked.all()
    np.testing.assert_array_equal(xt[~is_masked], x0[~is_masked])  # unmasked tokens are copied
    t = _t_from_rate(kind, rate)
    assert np.all((t >= 0.01 - 1e-5) & (t <= 1.0))

    lg = logits[..., :MASK].astype(np.float64)  # SUBS: no mass on the mask id
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, x0[..., None], -1)[..., 0]
    weight = 1 / t if kind == "linear" else np.pi / 2 / np.tan(np.pi * t / 4)
    expected = np.mean(weight * (is_masked * ce).sum(1) / length)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["masked_ce"]) == pytest.approx(ce[is_masked].mean(), rel=1e-5)
    acc = (lg.argmax(-1) == x0)[is_masked].mean()
    assert float(metrics["masked_accuracy"]) == pytest.approx(acc)
    assert float(metrics["mask_fraction"]) == pytest.approx(is_masked.mean())


def test_training_loss_gradient_flows_and_jits():
    # A tiny "model": a logits table indexed by the noisy token (mask included).
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.integers(0, VOCAB, (8, 5)), jnp.int32)
    table = jnp.asarray(rng.normal(size=(VOCAB + 1, VOCAB + 1)), jnp.float32)

    def loss_fn(table, key):
        logits_fn = lambda xt, rate: table[xt] * (1.0 + rate[:, None, None])
        return md.training_loss("cosine", logits_fn, x0, key, mask_id=MASK)[0]

    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(table, jax.random.key(2))
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
    assert float(jnp.abs(grad[:, MASK]).sum()) == 0  # the suppressed mask logit gets no gradient


def test_training_loss_perfect_model_is_zero_with_iid_times():
    x0 = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (4, 5)), jnp.int32)
    oracle = lambda xt, rate: 50.0 * jax.nn.one_hot(x0, VOCAB + 1)
    loss, metrics = md.training_loss(
        "linear", oracle, x0, jax.random.key(1), mask_id=MASK, low_discrepancy=False
    )
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics["masked_accuracy"]) == 1.0 or float(metrics["mask_fraction"]) == 0.0


def test_cfg_logits():
    cond, uncond = jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0])
    np.testing.assert_allclose(md.cfg_logits(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(md.cfg_logits(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(md.cfg_logits(cond, uncond, 3.0), [-1.0, 7.0])
    guided = md.guided_logits_fn(lambda x, r: (cond, uncond), 2.0)
    np.testing.assert_allclose(guided(None, None), [0.0, 5.0])


# --- sampler --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length,steps", [(6, 1), (6, 3), (6, 6), (6, 10), (1, 4)])
def test_masked_counts(kind, length, steps):
    counts = ms.masked_counts(length, steps, kind)
    assert counts.shape == (steps,) and counts[-1] == 0
    prev = np.concatenate([[length], counts[:-1]])
    # At least one unmasked per step while any is left; never more masked than the schedule says.
    assert np.all((counts < prev) | (prev == 0)) and np.all(counts >= 0)
    gamma = 1 - _np_rate(kind, np.arange(1, steps + 1) / steps)
    assert np.all(counts <= np.floor(length * gamma + 1e-9))


@pytest.mark.parametrize("length", range(1, 17))
def test_linear_counts_commit_one_token_a_step_when_steps_equal_length(length):
    # Floats once floored 6 * (1 - 5/6) to 0: two tokens at one step and none at the last.
    counts = ms.masked_counts(length, length, "linear")
    np.testing.assert_array_equal(counts, np.arange(length - 1, -1, -1))


def test_masked_counts_follow_maskgit_gamma_when_not_capped():
    r = np.arange(1, 17) / 16
    np.testing.assert_array_equal(
        ms.masked_counts(256, 16, "cosine"), np.floor(256 * np.cos(np.pi * r / 2))
    )
    np.testing.assert_array_equal(ms.masked_counts(256, 16, "linear"), np.floor(256 * (1 - r)))


def _random_logits_fn(vocab_with_mask):
    """Logits that depend on the current tokens, so different keys give different samples."""
    rng = np.random.default_rng(42)
    table = jnp.asarray(rng.normal(size=(vocab_with_mask, vocab_with_mask)), jnp.float32)

    def fn(x, rate):
        h = table[x] + jnp.cumsum(table[x], axis=1) * 0.3
        return h + rate[:, None, None]

    return fn


@pytest.mark.parametrize("length,steps", [(5, 1), (5, 5), (5, 9)])
def test_sample_unmasks_everything_and_is_deterministic(length, steps):
    run = jax.jit(
        partial(
            ms.sample, _random_logits_fn(VOCAB + 1), batch_size=16, length=length,
            mask_id=MASK, num_steps=steps,
        )
    )  # fmt: skip
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    assert a.shape == (16, length) and a.dtype == jnp.int32
    assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < VOCAB))  # nothing masked left
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_never_emits_mask_or_forbidden_ids():
    # The model prefers the mask id and ids 0, 1 overwhelmingly; they must still never appear.
    bias = jnp.zeros(VOCAB + 1).at[jnp.array([0, 1, MASK])].set(30.0)
    fn = lambda x, rate: _random_logits_fn(VOCAB + 1)(x, rate) + bias
    for temperature in (0.0, 2.0):
        out = ms.sample(
            fn, jax.random.key(3), batch_size=32, length=6, mask_id=MASK, num_steps=3,
            temperature=temperature, forbidden_ids=(0, 1),
        )  # fmt: skip
        assert not np.isin(np.asarray(out), [0, 1, MASK]).any()


@pytest.mark.parametrize("kind,temperature", [("linear", 0.0), ("cosine", 1.0)])
def test_sample_recovers_point_mass_target(kind, temperature):
    target = jnp.array([[3, 1, 4, 1, 5, 6, 2, 0]])
    fn = lambda x, rate: 40.0 * jax.nn.one_hot(jnp.broadcast_to(target, x.shape), VOCAB + 1)
    out = ms.sample(
        fn, jax.random.key(5), batch_size=3, length=8, mask_id=MASK, num_steps=4,
        temperature=temperature, schedule=kind,
    )  # fmt: skip
    np.testing.assert_array_equal(out, np.broadcast_to(target, (3, 8)))


def test_sample_follows_counts_keeps_unmasked_and_reports_rate():
    length, steps = 8, 4
    seen = []

    def fn(x, rate):
        jax.debug.callback(
            lambda *a: seen.append([np.asarray(v) for v in a]), x, rate, ordered=True
        )
        return _random_logits_fn(VOCAB + 1)(x, rate)

    out = ms.sample(
        fn, jax.random.key(9), batch_size=2, length=length, mask_id=MASK, num_steps=steps,
        schedule="cosine",
    )  # fmt: skip
    counts = ms.masked_counts(length, steps, "cosine")
    states = [x for x, _ in seen] + [np.asarray(out)]
    assert len(seen) == steps
    np.testing.assert_array_equal((states[0] == MASK).sum(1), [length, length])
    for k in range(steps):
        x, rate = seen[k]
        np.testing.assert_allclose(rate, (x == MASK).sum(1) / length)  # rate = fraction masked
        nxt = states[k + 1]
        np.testing.assert_array_equal((nxt == MASK).sum(1), [counts[k]] * 2)
        kept = x != MASK
        np.testing.assert_array_equal(nxt[kept], x[kept])  # never re-masked or changed


def test_sine_schedule_is_maskgit_ratio():
    """sine: mask rate sin(pi t/2) = MaskGIT's cos(pi r/2) with r = 1 - t; w = (pi/2) cot(pi t/2)."""
    s = md.make_mask_schedule("sine")
    t = np.linspace(0.01, 1.0, 50)
    np.testing.assert_allclose(md.mask_rate(s, t), np.cos(np.pi * (1 - t) / 2), atol=1e-6)
    np.testing.assert_allclose(
        md.loss_weight(s, t), np.pi / 2 / np.tan(np.pi * t / 2), rtol=1e-4, atol=1e-6
    )
    fd = (np.asarray(s.alpha(t + 1e-4)) - np.asarray(s.alpha(t - 1e-4))) / 2e-4
    np.testing.assert_allclose(s.dalpha_dt(jnp.asarray(t)), fd, atol=1e-4)


def test_masked_mean_weighting_averages_ce_over_masked_positions():
    rng = np.random.default_rng(1)
    x0 = rng.integers(0, VOCAB, (4, 6)).astype(np.int32)
    logits = rng.normal(size=(4, 6, VOCAB + 1)).astype(np.float32)
    calls = []
    loss, _ = md.training_loss(
        "linear", _record_calls(jnp.asarray(logits), calls), jnp.asarray(x0), jax.random.key(3),
        mask_id=MASK, weighting="masked_mean",
    )  # fmt: skip
    ((xt, _),) = calls
    is_masked = xt == MASK
    lg = logits[..., :MASK].astype(np.float64)
    ce = -np.take_along_axis(lg - np.log(np.exp(lg).sum(-1, keepdims=True)), x0[..., None], -1)
    per_example = (is_masked * ce[..., 0]).sum(1) / np.maximum(is_masked.sum(1), 1)
    assert float(loss) == pytest.approx(per_example.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        md.training_loss(
            "linear", lambda x, t: jnp.asarray(logits), jnp.asarray(x0), jax.random.key(3),
            mask_id=MASK, weighting="uniform",
        )  # fmt: skip


def test_word_ids_count_the_spaces_before_each_byte():
    from crossmodal_jax.data import text as text_tok
    from crossmodal_jax.stages.objectives import word_ids

    ids, _ = text_tok.encode_batch(["the digit one"], 16)
    expected = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]  # "the ", "digit ", "one"+EOS+PAD
    np.testing.assert_array_equal(np.asarray(word_ids(jnp.asarray(ids)))[0], expected)


def test_unit_masking_hides_whole_units_at_the_scheduled_rate():
    batch, length = 4096, 12
    units = jnp.tile(jnp.asarray([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]), (batch, 1))
    t = jnp.full((batch,), 0.4)
    x0 = jnp.zeros((batch, length), jnp.int32)
    key = jax.random.key(0)
    _, by_unit = md.forward_mask("linear", x0, t, key, mask_id=9, unit_ids_BxL=units, unit_prob=1.0)
    by_unit = np.asarray(by_unit)
    for u in range(4):
        cols = by_unit[:, np.asarray(units[0]) == u]
        assert (cols.all(axis=1) | ~cols.any(axis=1)).all()  # a unit is masked whole or not at all
    rate = float(md.mask_rate("linear", t)[0])
    assert abs(by_unit.mean() - rate) < 0.02  # the per-token marginal keeps the schedule
    _, half = md.forward_mask("linear", x0, t, key, mask_id=9, unit_ids_BxL=units, unit_prob=0.5)
    half = np.asarray(half)
    whole_units = np.stack(
        [
            half[:, cols].all(1) | ~half[:, cols].any(1)
            for cols in (np.asarray(units[0]) == u for u in range(4))
        ]
    ).all(0)
    # Half the examples are masked by unit (always whole); by token, all 4 units come out whole
    # with probability 0.006 at this rate and these unit sizes.
    assert 0.45 < whole_units.mean() < 0.56
    # No units, or unit_prob 0: exactly the independent draw of before.
    plain = md.forward_mask("linear", x0, t, key, mask_id=9)[1]
    zero = md.forward_mask("linear", x0, t, key, mask_id=9, unit_ids_BxL=units)[1]
    np.testing.assert_array_equal(plain, zero)
