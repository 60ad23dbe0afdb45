"""DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler, and the guidance interval."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import dpm_solver as dpm
from crossmodal_jax.diffusion import gaussian as gd

# diffusers turns torch tensors into numpy arrays the way numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def _coefs(u, xp):
    """A fixed, smooth, t-dependent linear-plus-tanh 'model' (u = t / T), not a good denoiser on
    purpose: the solver's second-order correction then matters. xp: numpy or jax.numpy."""
    return 0.8 + 0.15 * xp.cos(np.pi * u), 0.3 * xp.sin(3.0 * u)


def _np_model(x, t):
    a, b = _coefs(float(t) / T, np)
    return a * x + b * np.tanh(x)


def _jax_model(x, t_B):
    a, b = _coefs(t_B.astype(jnp.float32) / T, jnp)
    a, b = (v.reshape((-1,) + (1,) * (x.ndim - 1)) for v in (a, b))
    return a * x + b * jnp.tanh(x)


def _diffusers_scheduler(s, betas, prediction, spacing):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    import torch

    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=betas,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing=spacing,
    )
    # diffusers multiplies the float32 betas in float32; at t = T-1 of the cosine schedule (beta
    # clipped at 0.999) its abar is 1.3e-5 off ours (made in float64), and eps-prediction divides
    # by alpha ~ 5e-5 there. Same table on both sides, so the test compares the solvers alone.
    sched.alphas_cumprod = torch.from_numpy(np.array(s.alphas_cumprod))
    return sched


def _diffusers_sample(sched, x_T, num_steps):
    import torch

    sched.set_timesteps(num_steps)
    x = torch.from_numpy(np.array(x_T))
    for t in sched.timesteps:
        out = _np_model(x.numpy().astype(np.float64), int(t)).astype(np.float32)
        x = sched.step(torch.from_numpy(out), t, x).prev_sample
    return sched.timesteps.numpy(), x.numpy()


@pytest.mark.parametrize("spacing", dpm.TIMESTEP_SPACINGS)
def test_timesteps_equal_diffusers(spacing):
    s = gd.make_schedule("cosine", T)
    sched = _diffusers_scheduler(s, gd.cosine_betas(T), "eps", spacing)
    for n in (1, 2, 7, 10, 25, 50):
        sched.set_timesteps(n)
        np.testing.assert_array_equal(dpm.dpm_solver_timesteps(T, n, spacing), sched.timesteps)


@pytest.mark.parametrize("prediction", gd.PREDICTIONS)
def test_dpmpp_2m_equals_diffusers(prediction):
    """Same cosine schedule (our betas as trained_betas), model function and timesteps: the same
    samples to 1e-5 (relative to their size; eps-prediction from t = T-1 makes them large). One
    step (first order, straight to x0), and chains of 2M steps between a first-order first and
    last step."""
    s = gd.make_schedule("cosine", T)
    x_T = jax.random.normal(jax.random.key(0), (2, 3, 4))
    for num_steps, spacing in ((1, "linspace"), (4, "trailing"), (10, "linspace")):
        sched = _diffusers_scheduler(s, gd.cosine_betas(T), prediction, spacing)
        ts, ref = _diffusers_sample(sched, x_T, num_steps)
        ours = dpm.dpmpp_2m_sample(s, _jax_model, x_T, prediction=prediction, timesteps=ts)
        scale = np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(ours) / scale, ref / scale, atol=1e-5, rtol=0)


def test_dpmpp_2m_under_jit_recovers_a_point_mass():
    """With the exact denoiser of data at one point x*, every x0 prediction is x*, the D1 term
    vanishes, and the last step returns x* (the schedule passed traced through jit)."""
    s = gd.make_schedule("linear", 100)
    x_star = jnp.array([0.5, -0.25, 1.0])

    def eps_fn(x, t_B):  # eps consistent with x0 = x*
        return gd.eps_from_x0(s, x, t_B, jnp.broadcast_to(x_star, x.shape))

    sample = jax.jit(partial(dpm.dpmpp_2m_sample, model_fn=eps_fn, prediction="eps", num_steps=5))
    out = sample(s, x_T=jax.random.normal(jax.random.key(1), (4, 3)))
    np.testing.assert_allclose(out, np.broadcast_to(x_star, out.shape), atol=1e-5)


def test_dpmpp_2m_argument_errors():
    s = gd.make_schedule("linear", 100)
    x_T = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="exactly one"):
        dpm.dpmpp_2m_sample(s, _jax_model, x_T, prediction="eps")
    with pytest.raises(ValueError, match="strictly decreasing"):
        dpm.dpmpp_2m_sample(s, _jax_model, x_T, prediction="eps", timesteps=[10, 50])
    with pytest.raises(ValueError, match="num_steps"):
        dpm.dpm_solver_timesteps(100, 100)
    with pytest.raises(ValueError, match="spacing"):
        dpm.dpm_solver_timesteps(100, 10, "karras")


# --- guidance interval ----------------------------------------------------------------------------


def _pair_fn(xt, t):
    return xt + 1.0, xt - 1.0  # (conditional, unconditional)


def test_guidance_interval_outside_is_unguided_inside_is_cfg():
    """T = 100, interval (0.29, 0.5]: t + 1 in 30..50 is guided (boundaries exact despite
    0.29 * 100 = 28.999999999999996); every other step returns the conditional output."""
    xt = jnp.asarray(np.random.default_rng(0).normal(size=(100, 2, 3)), jnp.float32)
    t = jnp.arange(100, dtype=jnp.int32)
    fn = gd.guided_model_fn(_pair_fn, 3.0, interval=(0.29, 0.5), num_timesteps=100)
    out = np.asarray(fn(xt, t))
    cond, uncond = (np.asarray(v) for v in _pair_fn(xt, t))
    inside = (np.arange(100) >= 29) & (np.arange(100) <= 49)
    np.testing.assert_array_equal(out[~inside], cond[~inside])
    np.testing.assert_array_equal(
        out[inside], np.asarray(gd.cfg_combine(cond, uncond, 3.0))[inside]
    )


def test_default_guidance_interval_is_bit_identical_to_plain_cfg():
    xt = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    t = jnp.array([0, 10, 50, 99], jnp.int32)
    cond, uncond = _pair_fn(xt, t)
    for fn in (
        gd.guided_model_fn(_pair_fn, 2.5),
        gd.guided_model_fn(_pair_fn, 2.5, interval=(0.0, 1.0), num_timesteps=100),
    ):
        np.testing.assert_array_equal(fn(xt, t), gd.cfg_combine(cond, uncond, 2.5))


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.6, 0.4), (-0.1, 1.0), (0.0, 1.5), (0.1,)])
def test_bad_guidance_interval_is_refused(interval):
    with pytest.raises(ValueError, match="guidance interval"):
        gd.guided_model_fn(_pair_fn, 2.0, interval=interval, num_timesteps=100)
