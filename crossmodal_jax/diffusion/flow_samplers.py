"""ODE samplers for the rectified flow in `flow.py`: integrate dx/dt = v(x, t) from t = 1 (the
noise x_1, given explicitly so a fixed x_1 reproduces a run) down to t = 0 (the data).

The time grid is `flow_timesteps(num_steps, shift)`: num_steps + 1 points evenly spaced from 1 to
0, optionally pushed towards the noise end by SD3's shift. Both samplers loop with `lax.scan` over
the grid's intervals, so they compile to one loop body whatever the number of steps.

- `euler`: one model call a step (NFE = num_steps), first order;
- `heun`: Euler predictor then trapezoidal corrector (Karras et al. 2022, algorithm 1), two calls
  a step (NFE = 2 num_steps), second order. The corrector runs on the last step too: unlike a
  Gaussian diffusion's sigma = 0 end, the linear path's velocity is regular at t = 0.

`model_fn(x, t_B) -> v` is called with t_B f32[B] in [0, 1]; wrap it with
`gaussian.guided_model_fn` for classifier-free guidance (guidance is linear, and so is the
velocity in (x0, eps)). Everything is jit-compatible with `num_steps` and `shift` static.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.diffusion.flow import ModelFn, shift_time

Array = jax.Array


def flow_timesteps(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """f32[num_steps + 1]: the times a sampler visits, from 1 (noise) down to 0 (data)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ts = shift_time(np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64), shift)
    return ts.astype(np.float32)


def _intervals(num_steps: int, shift: float) -> tuple[Array, Array]:
    ts = flow_timesteps(num_steps, shift)
    return jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])


def _full_t(t: Array, x: Array) -> Array:
    return jnp.full((x.shape[0],), t, jnp.float32)


def euler_sample(model_fn: ModelFn, x_1: Array, *, num_steps: int, shift: float = 1.0) -> Array:
    """Euler steps x <- x + (t' - t) v(x, t) over the grid: x_0 from the noise x_1."""

    def step(x: Array, ts: tuple[Array, Array]) -> tuple[Array, None]:
        t, t_next = ts
        v = model_fn(x, _full_t(t, x)).astype(jnp.float32)
        return x + (t_next - t) * v, None

    x, _ = jax.lax.scan(step, x_1.astype(jnp.float32), _intervals(num_steps, shift))
    return x


def heun_sample(model_fn: ModelFn, x_1: Array, *, num_steps: int, shift: float = 1.0) -> Array:
    """Heun steps: Euler to x' at t', then x <- x + (t' - t) (v(x, t) + v(x', t')) / 2."""

    def step(x: Array, ts: tuple[Array, Array]) -> tuple[Array, None]:
        t, t_next = ts
        dt = t_next - t
        v = model_fn(x, _full_t(t, x)).astype(jnp.float32)
        x_pred = x + dt * v
        v_next = model_fn(x_pred, _full_t(t_next, x)).astype(jnp.float32)
        return x + dt * 0.5 * (v + v_next), None

    x, _ = jax.lax.scan(step, x_1.astype(jnp.float32), _intervals(num_steps, shift))
    return x


# Explicit registry: configs name a sampler by key (generator.sample.sampler), never via getattr.
SAMPLERS: dict[str, Callable[..., Array]] = {"euler": euler_sample, "heun": heun_sample}

# Model calls per sampler step, for comparing samplers at equal cost (NFE = steps x this).
CALLS_PER_STEP = {"euler": 1, "heun": 2}


def sample(
    model_fn: ModelFn, x_1: Array, *, sampler: str, num_steps: int, shift: float = 1.0
) -> Array:
    """x_0 by the sampler named `sampler` (a key of SAMPLERS) from the noise x_1."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](model_fn, x_1, num_steps=num_steps, shift=shift)
