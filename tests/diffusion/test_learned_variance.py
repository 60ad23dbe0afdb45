"""ddpm_sample's reverse-step variances (fixed_small, fixed_large, learned_range), per-example keys,
and the learned-range loop against diffusers' DDPMScheduler on the same model outputs and noise.

Closed forms are computed in float64 numpy from guided_diffusion's definitions (Nichol & Dhariwal
2021, eq. 15), never by calling the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import gaussian as gd
from crossmodal_jax.diffusion import gaussian_samplers as gs

T = 6
BETAS = np.linspace(0.05, 0.3, T)  # a tiny chain with betas far apart from beta_tilde


def _np_log_variances(betas):
    """(log posterior variance, clipped at t=0 to its t=1 value; log beta_t), in float64."""
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post = betas * (1.0 - abar_prev) / (1.0 - abar)
    return np.log(np.append(post[1], post[1:])), np.log(betas)


def test_learned_range_log_variance_closed_form():
    s = gd.schedule_from_betas(BETAS)
    min_log, max_log = _np_log_variances(BETAS)
    for t in range(T):
        got = [float(gs.learned_range_log_variance(s, t, jnp.float32(v))) for v in (-1, 0, 1, 0.5)]
        mid = 0.5 * (min_log[t] + max_log[t])
        want = [min_log[t], mid, max_log[t], 0.25 * min_log[t] + 0.75 * max_log[t]]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert max_log[0] > min_log[0]  # at t=0 too: beta_0 > the clipped posterior variance


def _eps_v_fn(v_value):
    """model_fn returning [eps | v] with a fixed v; eps depends on x and t."""

    def fn(x, t):
        eps = jnp.tanh(x) * (1.0 + t[:, None] / T)
        return jnp.concatenate([eps, jnp.full_like(eps, v_value)], axis=-1)

    return fn


def test_learned_range_endpoints_are_the_fixed_variances():
    """v = -1 everywhere is fixed_small, v = +1 is fixed_large (to float rounding: XLA may fuse
    the interpolation's 0 * a + 1 * b differently from b alone); v = 0 lies between."""
    s = gd.schedule_from_betas(BETAS)
    x_T, key = jax.random.normal(jax.random.key(0), (4, 3)), jax.random.key(1)
    eps_fn = lambda x, t: _eps_v_fn(0.0)(x, t)[:, :3]
    run = lambda fn, variance: gs.ddpm_sample(s, fn, x_T, key, prediction="eps", variance=variance)
    small, large = run(eps_fn, "fixed_small"), run(eps_fn, "fixed_large")
    np.testing.assert_allclose(run(_eps_v_fn(-1.0), "learned_range"), small, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run(_eps_v_fn(1.0), "learned_range"), large, rtol=1e-6, atol=1e-7)
    mid = run(_eps_v_fn(0.0), "learned_range")
    assert not np.allclose(mid, small) and not np.allclose(mid, large)
    with pytest.raises(ValueError, match="unknown DDPM variance"):
        run(eps_fn, "learned")


def test_per_example_keys_make_an_example_independent_of_its_batch():
    s = gd.schedule_from_betas(BETAS)
    x_T = jax.random.normal(jax.random.key(0), (3, 2))
    keys = jax.random.split(jax.random.key(1), 3)
    fn = _eps_v_fn(0.3)
    both = gs.ddpm_sample(s, fn, x_T, keys, prediction="eps", variance="learned_range")
    alone = gs.ddpm_sample(s, fn, x_T[1:2], keys[1:2], prediction="eps", variance="learned_range")
    np.testing.assert_array_equal(both[1:2], alone)
    noise = gs.ddpm_noise(keys, x_T.shape, T)  # what each step adds, per example
    assert noise.shape == (T, 3, 2)
    np.testing.assert_array_equal(noise[:, 1:2], gs.ddpm_noise(keys[1:2], (1, 2), T))


def test_learned_range_equals_diffusers_ddpm_scheduler(monkeypatch):
    """All 1000 steps of the linear schedule, diffusers' DDPMScheduler(variance_type=
    "learned_range") stepping on the same [eps | v] model (torch twin of ours) and the same noise."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_ddpm

    num_t, shape, sigma = 1000, (4, 3), 0.5
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3)).astype(np.float32)
    u = rng.normal(size=(3, 3)).astype(np.float32)
    # eps of N(0, sigma^2) data, eps = c_t x_t (so the chain stays O(1)), plus a nonlinear term;
    # v in [-1, 1] depends on x and t.
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_t))
    k = np.sqrt(abar) * sigma**2 / (abar * sigma**2 + 1.0 - abar)
    c = ((1.0 - np.sqrt(abar) * k) / np.sqrt(1.0 - abar)).astype(np.float32)

    def model_fn(x, t):
        eps = jnp.asarray(c)[t][:, None] * x + 0.1 * jnp.tanh(x @ w)
        return jnp.concatenate([eps, jnp.tanh(x @ u + t[:, None] / num_t)], axis=-1)

    def torch_model(x, t):
        eps = float(c[t]) * x + 0.1 * torch.tanh(x @ torch.from_numpy(w))
        return torch.cat([eps, torch.tanh(x @ torch.from_numpy(u) + float(t) / num_t)], dim=1)

    s = gd.make_schedule("linear", num_t)
    x_T, key = jax.random.normal(jax.random.key(0), shape), jax.random.key(1)
    got = gs.ddpm_sample(s, model_fn, x_T, key, prediction="eps", variance="learned_range")
    noise = np.array(gs.ddpm_noise(key, shape, num_t))  # writable, for torch.from_numpy

    sched = diffusers.DDPMScheduler(
        num_train_timesteps=num_t,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="learned_range",
        clip_sample=False,
    )
    step_noise = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **kw: step_noise["z"])
    x = torch.from_numpy(np.array(x_T))
    for i, t in enumerate(sched.timesteps):  # 999, ..., 0: our scan's order
        step_noise["z"] = torch.from_numpy(noise[i])
        x = sched.step(torch_model(x, t), t, x).prev_sample
    want = x.numpy()
    err = np.abs(np.asarray(got) - want).max() / np.ptp(want)
    print(f"learned-range DDPM vs diffusers DDPMScheduler, 1000 steps: {err:.2e} of range")
    assert err < 1e-4
    # The variance really was compared: the fixed posterior variance is another sampler.
    eps_fn = lambda x, t: model_fn(x, t)[:, :3]
    fixed = gs.ddpm_sample(s, eps_fn, x_T, key, prediction="eps")
    fixed_err = np.abs(np.asarray(fixed) - want).max() / np.ptp(want)
    print(f"range {np.ptp(want):.3g}; fixed_small instead: {fixed_err:.2e}")
    assert fixed_err > 100 * err
