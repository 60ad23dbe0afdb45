"""Rectified flow: interpolant, loss, time sampling and the ODE samplers, against closed forms.

For data x0 ~ N(mu, sigma^2) (per dimension) and x_t = (1 - t) x0 + t eps, the marginal is
N((1 - t) mu, V_t) with V_t = (1 - t)^2 sigma^2 + t^2, and the exact velocity field is
    E[eps - x0 | x_t] = (t - (1 - t) sigma^2) / V_t (x_t - (1 - t) mu) - mu.
Its ODE maps the noise x_1 to x_0 = mu + sigma x_1 exactly, so the samplers' endpoints are checked
sample by sample, not only in distribution.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import flow, flow_samplers, gaussian

MU = np.array([1.5, -2.0, 0.5, 3.0], np.float32)
SIGMA = np.array([0.5, 1.0, 2.0, 0.25], np.float32)


def gaussian_velocity(mu, sigma):
    """The exact velocity field of the straight path for data N(mu, sigma^2 I) (module doc)."""

    def model_fn(x, t_B):
        t = t_B[:, None]
        var = (1 - t) ** 2 * sigma**2 + t**2
        return (t - (1 - t) * sigma**2) / var * (x - (1 - t) * mu) - mu

    return model_fn


def _noise(n=4096, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, MU.size), jnp.float32)


def _solve(sampler, x_1, num_steps, model_fn=None, shift=1.0):
    model_fn = model_fn or gaussian_velocity(MU, SIGMA)
    kw = dict(sampler=sampler, num_steps=num_steps, shift=shift)  # static under jit
    return np.asarray(jax.jit(partial(flow_samplers.sample, model_fn, **kw))(x_1))


def _endpoint_error(x_0, x_1):
    """Mean absolute distance to the exact ODE solution mu + sigma x_1."""
    return float(np.abs(x_0 - (MU + SIGMA * np.asarray(x_1))).mean())


def test_interpolant_velocity_and_its_inverse():
    x0, eps = np.full((2, 3), 2.0, np.float32), np.full((2, 3), -1.0, np.float32)
    t = jnp.array([0.0, 0.25])
    xt = np.asarray(flow.interpolate(x0, eps, t))
    np.testing.assert_allclose(xt[0], 2.0)  # t = 0: the data
    np.testing.assert_allclose(xt[1], 0.75 * 2.0 + 0.25 * -1.0)
    v = flow.velocity_target(x0, eps)
    np.testing.assert_allclose(v, -3.0)
    back_x0, back_eps = flow.x0_eps_from_velocity(xt, t, v)
    np.testing.assert_allclose(back_x0, x0, rtol=1e-6)
    np.testing.assert_allclose(back_eps, eps, rtol=1e-6)


def test_loss_equals_its_closed_form_on_a_fixed_input():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0.1, 0.5, 0.9], np.float32)
    model_fn = lambda x, t_B: 0.5 * x + t_B[:, None, None, None]
    loss, per_example = flow.velocity_loss(model_fn, x0, eps, t)
    tb = t[:, None, None, None].astype(np.float64)
    xt = (1 - tb) * x0 + tb * eps
    want = ((0.5 * xt + tb - (eps - x0)) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(per_example, want, rtol=1e-5)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)


@pytest.mark.parametrize("time_sampling", flow.TIME_SAMPLINGS)
def test_training_loss_is_zero_for_the_oracle_velocity(time_sampling):
    """x0 = 0: x_t = t eps and the target eps = x_t / t, which the oracle returns."""
    x0 = jnp.zeros((64, 5))
    oracle = lambda x, t_B: x / jnp.maximum(t_B[:, None], 1e-6)
    loss, aux = flow.training_loss(oracle, x0, jax.random.key(1), time_sampling=time_sampling)
    assert aux["t"].shape == (64,) and aux["mse_per_example"].shape == (64,)
    assert float(loss) < 1e-6
    zero_loss, _ = flow.training_loss(lambda x, t: jnp.zeros_like(x), x0, jax.random.key(1))
    np.testing.assert_allclose(zero_loss, 1.0, atol=0.1)  # E[eps^2]


def test_logit_normal_times_are_in_the_open_interval_with_the_right_median():
    t = np.asarray(
        flow.sample_time(
            jax.random.key(0), 20000, kind="logit_normal", logit_mean=0.8, logit_std=1.5
        )
    )
    assert np.all((t > 0) & (t < 1))
    np.testing.assert_allclose(np.median(t), 1 / (1 + np.exp(-0.8)), atol=0.01)
    u = np.asarray(flow.sample_time(jax.random.key(0), 20000, kind="uniform"))
    assert np.all((u >= 0) & (u < 1)) and abs(np.median(u) - 0.5) < 0.01
    with pytest.raises(ValueError, match="unknown flow time sampling 'beta'"):
        flow.sample_time(jax.random.key(0), 4, kind="beta")


def test_timestep_grid_and_shift():
    ts = flow_samplers.flow_timesteps(4)
    np.testing.assert_allclose(ts, [1.0, 0.75, 0.5, 0.25, 0.0])
    shifted = flow_samplers.flow_timesteps(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and np.all(np.diff(shifted) < 0)
    np.testing.assert_allclose(shifted[2], 3 * 0.5 / (1 + 2 * 0.5))
    assert np.all(shifted[1:-1] > ts[1:-1])  # more of the grid near the noise end


def test_euler_with_the_exact_velocity_lands_on_the_data_distribution():
    x_1 = _noise()
    x_0 = _solve("euler", x_1, 64)
    np.testing.assert_allclose(x_0.mean(axis=0), MU, atol=0.05)
    np.testing.assert_allclose(x_0.std(axis=0), SIGMA, rtol=0.05)
    assert _endpoint_error(x_0, x_1) < 0.03  # first order: 0.017 at 64 steps


def test_heun_is_more_accurate_with_fewer_steps():
    x_1 = _noise(512)
    euler_error = _endpoint_error(_solve("euler", x_1, 16), x_1)
    heun_error = _endpoint_error(_solve("heun", x_1, 4), x_1)  # half the model calls
    assert heun_error < euler_error / 2, (heun_error, euler_error)  # 0.024 against 0.067
    x_0 = _solve("heun", _noise(), 8)
    np.testing.assert_allclose(x_0.mean(axis=0), MU, atol=0.05)
    np.testing.assert_allclose(x_0.std(axis=0), SIGMA, rtol=0.05)
    shifted = _solve("heun", x_1, 8, shift=3.0)  # another grid, the same ODE's solution
    assert _endpoint_error(shifted, x_1) < 0.02


def test_guidance_extrapolates_between_conditional_and_unconditional_flows():
    """With sigma = 1 the velocity is affine in mu, so CFG's combine of the velocities of
    N(mu_c, 1) and N(mu_u, 1) is the velocity of N(mu_u + w (mu_c - mu_u), 1)."""
    ones = np.ones_like(MU)
    mu_c, mu_u, w = MU, np.zeros_like(MU), 2.5
    v_c, v_u = gaussian_velocity(mu_c, ones), gaussian_velocity(mu_u, ones)
    guided = gaussian.guided_model_fn(lambda x, t: (v_c(x, t), v_u(x, t)), w)
    x_1 = _noise(2048)
    x_0 = _solve("heun", x_1, 8, model_fn=guided)
    np.testing.assert_allclose(x_0 - np.asarray(x_1), np.broadcast_to(w * MU, x_0.shape), atol=1e-2)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="unknown flow sampler 'rk4'"):
        flow_samplers.sample(lambda x, t: x, jnp.zeros((1, 2)), sampler="rk4", num_steps=2)
