"""Gaussian diffusion: schedules, forward process, predictions, loss, guidance and samplers.

Reference values are computed independently in float64 numpy from the textbook formulas (Ho et al.
2020; Nichol & Dhariwal 2021; Song et al. 2021), never by calling the code under test.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import gaussian as gd
from crossmodal_jax.diffusion import gaussian_samplers as gs

T = 50
KINDS = ("linear", "cosine")


def _np_betas(kind, num_t):
    if kind == "linear":
        scale = 1000.0 / num_t
        return np.linspace(scale * 1e-4, scale * 0.02, num_t)
    return np.clip(
        1.0 - _cos_abar(np.arange(1, num_t + 1), num_t) / _cos_abar(np.arange(num_t), num_t),
        0,
        0.999,
    )


def _cos_abar(t, num_t, s=0.008):
    f = lambda u: np.cos((u / num_t + s) / (1 + s) * np.pi / 2) ** 2
    return f(np.asarray(t, np.float64)) / f(0.0)


# --- schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_constants_match_closed_forms(kind):
    s = gd.make_schedule(kind, T)
    betas = _np_betas(
        kind, T
    )  # float64 reference; the stored f32 betas lose precision in 1 - 0.999
    assert s.num_timesteps == T and all(np.shape(v) == (T,) for v in jax.tree.leaves(s))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(s))
    abar = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod_prev, np.append(1.0, abar[:-1]), rtol=1e-5)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod, np.sqrt(abar), rtol=1e-5)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar), rtol=1e-5)
    assert np.all(np.diff(abar) < 0) and np.all(betas > 0) and np.all(betas <= 0.999)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-5)


def test_linear_schedule_is_ddpm_at_1000_steps():
    s = gd.make_schedule("linear", 1000)
    np.testing.assert_allclose(s.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-5)


def test_cosine_abar_follows_cos_squared():
    s = gd.make_schedule("cosine", T)
    expected = _cos_abar(np.arange(1, T + 1), T)  # abar after step t (0-based) is f(t+1)/f(0)
    np.testing.assert_allclose(s.alphas_cumprod, expected, atol=1e-5)
    assert float(s.betas[-1]) == pytest.approx(0.999)  # the last beta is the clipped one


def test_make_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"'bogus'.*cosine.*linear"):
        gd.make_schedule("bogus", T)


# --- forward process and posterior ----------------------------------------------------------------


def _data(seed=0, shape=(6, 4, 3)):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=shape).astype(np.float32)
    eps = rng.normal(size=shape).astype(np.float32)
    t = rng.integers(0, T, size=shape[0]).astype(np.int32)
    return x0, eps, t


@pytest.mark.parametrize("kind", KINDS)
def test_q_sample_closed_form(kind):
    s = gd.make_schedule(kind, T)
    x0, eps, t = _data()
    abar = np.cumprod(1.0 - np.asarray(s.betas, np.float64))[t][:, None, None]
    expected = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    np.testing.assert_allclose(gd.q_sample(s, x0, t, eps), expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_q_posterior_is_bayes_product(kind):
    """q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab') x0, 1-ab')."""
    s = gd.make_schedule(kind, T)
    x0, xt, _ = _data(1)
    t = np.array([1, 2, 7, 20, T - 2, T - 1], np.int32)
    betas = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1 - betas)
    b, a, abar_prev = betas[t], 1 - betas[t], abar[t - 1]
    # Completing the square: precisions add, mean = var * (sum of precision-weighted means).
    precision = a / b + 1 / (1 - abar_prev)
    var = 1 / precision
    mean = var[:, None, None] * (
        (np.sqrt(a) / b)[:, None, None] * xt
        + (np.sqrt(abar_prev) / (1 - abar_prev))[:, None, None] * x0
    )
    got_mean, got_var, got_logvar = gd.q_posterior(s, x0, xt, t)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_var).reshape(-1), var, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(got_logvar).reshape(-1), np.log(var), rtol=1e-4, atol=1e-5
    )


def test_q_posterior_at_t0_is_x0():
    s = gd.make_schedule("linear", T)
    x0, xt, _ = _data(2)
    t = np.zeros(x0.shape[0], np.int32)
    mean, var, logvar = gd.q_posterior(s, x0, xt, t)
    np.testing.assert_allclose(mean, x0, atol=1e-5)
    np.testing.assert_allclose(var, 0.0, atol=1e-12)
    assert np.all(np.isfinite(logvar))  # clipped log variance, never -inf


# --- predictions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prediction", gd.PREDICTIONS)
def test_prediction_round_trip(kind, prediction):
    s = gd.make_schedule(kind, T)
    x0, eps, t = _data(3)
    t = np.array([0, 1, 10, 25, 40, T - 2], np.int32)
    xt = gd.q_sample(s, x0, t, eps)
    target = gd.model_target(s, x0, t, eps, prediction)
    abar = np.cumprod(1.0 - np.asarray(s.betas, np.float64))[t][:, None, None]
    expected = eps if prediction == "eps" else np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
    np.testing.assert_allclose(target, expected, atol=1e-5)
    x0_hat, eps_hat = gd.predict_x0_eps(s, xt, t, target, prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3 if prediction == "eps" else 1e-5)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_unknown_prediction_is_rejected():
    s = gd.make_schedule("linear", T)
    x0, eps, t = _data()
    with pytest.raises(ValueError, match="'x0'"):
        gd.model_target(s, x0, t, eps, "x0")


# --- oracles for a known data distribution --------------------------------------------------------


def _point_oracle(s, x_star, prediction):
    """Exact model for data = the point x_star: eps = (x_t - sqrt(abar) x*) / sqrt(1 - abar)."""

    def model_fn(xt, t):
        abar = s.alphas_cumprod[t].reshape((-1,) + (1,) * (xt.ndim - 1))
        eps = (xt - jnp.sqrt(abar) * x_star) / jnp.sqrt(1 - abar)
        return eps if prediction == "eps" else jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x_star

    return model_fn


def _gaussian_oracle(s, mu, sigma):
    """Exact eps-model for data ~ N(mu, sigma^2): x_t ~ N(sqrt(abar) mu, abar sigma^2 + 1-abar)."""

    def model_fn(xt, t):
        abar = s.alphas_cumprod[t].reshape((-1,) + (1,) * (xt.ndim - 1))
        var_t = abar * sigma**2 + 1 - abar
        x0_mean = mu + jnp.sqrt(abar) * sigma**2 / var_t * (xt - jnp.sqrt(abar) * mu)
        return (xt - jnp.sqrt(abar) * x0_mean) / jnp.sqrt(1 - abar)

    return model_fn


X_STAR = np.array(
    [[0.5, -1.0, 0.25], [1.5, 0.0, -0.75]], np.float32
)  # one data point of shape [2, 3]


@pytest.mark.parametrize("prediction", gd.PREDICTIONS)
def test_training_loss_oracle_is_zero_and_zero_model_positive(prediction):
    s = gd.make_schedule("cosine", T)
    x0 = jnp.broadcast_to(X_STAR, (16,) + X_STAR.shape)
    key = jax.random.key(0)
    loss, aux = gd.training_loss(
        s, _point_oracle(s, X_STAR, prediction), x0, key, prediction=prediction
    )
    assert float(loss) < 1e-8
    assert aux["mse_per_example"].shape == (16,) and aux["t"].dtype == jnp.int32
    zero_loss, aux = gd.training_loss(
        s, lambda xt, t: jnp.zeros_like(xt), x0, key, prediction=prediction
    )
    assert float(zero_loss) > 0.1
    np.testing.assert_allclose(zero_loss, aux["mse_per_example"].mean(), rtol=1e-6)


def test_training_loss_is_differentiable():
    s = gd.make_schedule("linear", T)
    x0 = jnp.ones((4, 3))
    loss_fn = lambda w: gd.training_loss(
        s, lambda xt, t: w * xt, x0, jax.random.key(1), prediction="v"
    )[0]
    assert np.isfinite(float(jax.grad(loss_fn)(0.3)))


# --- classifier-free guidance ---------------------------------------------------------------------


def test_cfg_combine_and_guided_model_fn():
    rng = np.random.default_rng(4)
    cond, uncond = rng.normal(size=(2, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(gd.cfg_combine(cond, uncond, 0.0), uncond, atol=1e-6)
    np.testing.assert_allclose(gd.cfg_combine(cond, uncond, 1.0), cond, atol=1e-6)
    np.testing.assert_allclose(
        gd.cfg_combine(cond, uncond, 3.5), uncond + 3.5 * (cond - uncond), atol=1e-5
    )
    pair_fn = lambda xt, t: (xt + 1.0, xt - 1.0)
    guided = gd.guided_model_fn(pair_fn, 2.0)
    np.testing.assert_allclose(
        guided(cond, jnp.zeros(3, jnp.int32)), (cond - 1) + 2.0 * 2.0, atol=1e-5
    )


# --- samplers -------------------------------------------------------------------------------------


def _x_T(seed=0, batch=3):
    return jax.random.normal(jax.random.key(seed), (batch,) + X_STAR.shape)


@pytest.mark.parametrize("prediction", gd.PREDICTIONS)
def test_ddim_deterministic_and_recovers_point_mass(prediction):
    s = gd.make_schedule("cosine", T)
    model_fn = _point_oracle(s, X_STAR, prediction)
    sample = jax.jit(
        partial(gs.ddim_sample, model_fn=model_fn, num_steps=10, prediction=prediction)
    )
    out_a = sample(s, x_T=_x_T(), key=jax.random.key(1))
    out_b = sample(s, x_T=_x_T(), key=jax.random.key(2))
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_allclose(out_a, np.broadcast_to(X_STAR, out_a.shape), atol=1e-4)


@pytest.mark.parametrize("prediction", gd.PREDICTIONS)
def test_ddpm_recovers_point_mass(prediction):
    s = gd.make_schedule("linear", T)
    model_fn = _point_oracle(s, X_STAR, prediction)
    sample = jax.jit(partial(gs.ddpm_sample, model_fn=model_fn, prediction=prediction))
    out = sample(s, x_T=_x_T(), key=jax.random.key(1))
    np.testing.assert_allclose(out, np.broadcast_to(X_STAR, out.shape), atol=1e-4)


def test_ddim_eta1_full_steps_equals_ddpm():
    """eta=1 over all T steps: DDIM's update is the ancestral posterior step (same noise draws)."""
    s = gd.make_schedule("linear", T)
    model_fn = _gaussian_oracle(s, 0.3, 0.5)
    x_T, key = _x_T(5), jax.random.key(7)
    ddpm = gs.ddpm_sample(s, model_fn, x_T, key, prediction="eps")
    ddim = gs.ddim_sample(s, model_fn, x_T, key, num_steps=T, eta=1.0, prediction="eps")
    np.testing.assert_allclose(ddim, ddpm, atol=1e-4)


def _np_gaussian_denoiser(abar, mu, sigma):
    """For N(mu, sigma^2) data: E[x0|x_t] = k x_t + c and eps_hat = ke x_t + ce."""
    k = np.sqrt(abar) * sigma**2 / (abar * sigma**2 + 1 - abar)
    c = mu - k * np.sqrt(abar) * mu
    return k, c, (1 - np.sqrt(abar) * k) / np.sqrt(1 - abar), -np.sqrt(abar) * c / np.sqrt(1 - abar)


def test_ddim_is_the_exact_affine_map_for_gaussian_data():
    """For Gaussian data, eta=0 DDIM is affine in x_T: compose the steps of eq. 12 in float64."""
    num_t, num_steps, mu, sigma = 100, 25, 0.5, 0.3
    s = gd.make_schedule("linear", num_t)
    abar = np.cumprod(1 - _np_betas("linear", num_t))
    ts = np.round(np.linspace(0, num_t - 1, num_steps)).astype(int)[::-1]
    gain, shift = 1.0, 0.0  # x = gain * x_T + shift
    for i, t in enumerate(ts):
        abar_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        k, c, ke, ce = _np_gaussian_denoiser(abar[t], mu, sigma)
        step_gain = np.sqrt(abar_prev) * k + np.sqrt(1 - abar_prev) * ke
        step_shift = np.sqrt(abar_prev) * c + np.sqrt(1 - abar_prev) * ce
        gain, shift = step_gain * gain, step_gain * shift + step_shift
    x_T = jax.random.normal(jax.random.key(3), (64, 2))
    model_fn = _gaussian_oracle(s, mu, sigma)
    out = gs.ddim_sample(s, model_fn, x_T, jax.random.key(4), num_steps=num_steps, prediction="eps")
    np.testing.assert_allclose(out, gain * np.asarray(x_T) + shift, atol=1e-4)
    assert gain > 0.5 * sigma  # sanity: the sampler maps unit noise to roughly the data spread


def test_ddpm_moments_for_gaussian_data():
    """Ancestral sampling of N(mu, sigma^2) data: propagate mean and variance in float64.

    Each step is x_{t-1} = c1 x0_hat + c2 x_t + sqrt(beta_tilde) z with x0_hat affine in x_t.
    beta_tilde is the lower-bound variance, so samples come out slightly narrower than sigma (~0.27
    instead of 0.3 here), which the float64 recursion predicts.
    """
    num_t, mu, sigma = 100, 0.5, 0.3
    s = gd.make_schedule("linear", num_t)
    betas = _np_betas("linear", num_t)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    x_T = jax.random.normal(jax.random.key(3), (8000, 2))
    mean, var = float(np.mean(x_T)), float(np.var(x_T))
    for t in range(num_t - 1, -1, -1):
        k, c, _, _ = _np_gaussian_denoiser(abar[t], mu, sigma)
        c1 = betas[t] * np.sqrt(abar_prev[t]) / (1 - abar[t])
        c2 = (1 - abar_prev[t]) * np.sqrt(1 - betas[t]) / (1 - abar[t])
        beta_tilde = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
        gain = c1 * k + c2
        mean, var = gain * mean + c1 * c, gain**2 * var + beta_tilde
    out = gs.ddpm_sample(
        s, _gaussian_oracle(s, mu, sigma), x_T, jax.random.key(4), prediction="eps"
    )
    assert abs(float(out.mean()) - mean) < 0.01
    assert abs(float(out.std()) - np.sqrt(var)) < 0.01


def test_clip_x0_bounds_the_ddim_result():
    s = gd.make_schedule("cosine", T)
    model_fn = _point_oracle(s, 3.0 * X_STAR, "eps")  # data outside [-1, 1]
    out = gs.ddim_sample(
        s, model_fn, _x_T(), jax.random.key(0), num_steps=5, prediction="eps", clip_x0=1.0
    )
    assert float(jnp.abs(out).max()) <= 1.0 + 1e-6


def test_ddim_timesteps():
    np.testing.assert_array_equal(gs.ddim_timesteps(50, 5), [49, 37, 24, 12, 0])
    assert len(set(gs.ddim_timesteps(50, 50).tolist())) == 50
    with pytest.raises(ValueError, match="num_steps"):
        gs.ddim_timesteps(50, 51)


def test_min_snr_weighting_is_a_clipped_snr_weighted_x0_loss():
    s = gd.make_schedule("cosine", 1000)
    key = jax.random.key(3)
    x0, noise, out = jax.random.normal(key, (3, 8, 4, 4, 2))
    t = jnp.arange(0, 1000, 125, dtype=jnp.int32)
    xt = gd.q_sample(s, x0, t, noise)
    abar = s.alphas_cumprod[t]
    snr = abar / (1 - abar)
    gamma = 5.0
    for prediction in ("eps", "v"):
        x0_hat, _ = gd.predict_x0_eps(s, xt, t, out, prediction)
        x0_err = jnp.mean(jnp.square(x0_hat - x0).reshape(8, -1), axis=1)
        target = gd.model_target(s, x0, t, noise, prediction)
        err = jnp.mean(jnp.square(out - target).reshape(8, -1), axis=1)
        w = gd.min_snr_weight(s, t, prediction, gamma)
        np.testing.assert_allclose(w * err, jnp.minimum(snr, gamma) * x0_err, rtol=2e-4, atol=1e-6)
    # The loss uses it; the uniform loss does not.
    model_fn = lambda x, t: jnp.zeros_like(x)
    uniform, aux = gd.training_loss(s, model_fn, x0[0], key, prediction="v")
    weighted, aux2 = gd.training_loss(s, model_fn, x0[0], key, prediction="v", weighting="min_snr")
    np.testing.assert_allclose(uniform, jnp.mean(aux["mse_per_example"]), rtol=1e-6)
    w = gd.min_snr_weight(s, aux2["t"], "v", 5.0)
    np.testing.assert_allclose(weighted, jnp.mean(w * aux2["mse_per_example"]), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss weighting 'elbo'"):
        gd.training_loss(s, model_fn, x0[0], key, prediction="v", weighting="elbo")
