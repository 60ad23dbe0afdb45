"""TrainState, the one shared `train_step`, `eval_step` and the optimizer: pure functions.

Every stage of every task trains through `train_step`; what differs is the injected *objective*:
    objective(params, model_state, batch, key) -> (loss, (new_model_state, metrics))
`model_state` holds non-trained variables (the VQ codebook's EMA statistics, or the frozen tokenizer that
the generator encodes its targets with). There is no RNG in the state: the step folds its number into the
run's key, so a resumed run draws exactly the randomness an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

__all__ = [
    "Objective",
    "TrainState",
    "ema_update",
    "eval_step",
    "init_state",
    "make_optimizer",
    "train_step",
]

Objective = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


@flax.struct.dataclass
class TrainState:
    """Everything one stage's training carries from step to step (a pytree; no RNG: see above)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # trained parameters
    opt_state: Any  # optax state
    model_state: Any  # non-trained variables (codebook EMA stats, frozen tokenizer, latent stats)
    ema_params: Any  # EMA of params, used for sampling and evaluation


def make_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with linear warmup, cosine decay and global-norm clipping (none when grad_clip <= 0:
    optax's clip to norm 0 would zero every gradient); returns (tx, lr schedule)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay),
    )
    return tx, schedule


def init_state(params: Any, model_state: Any, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state. Pure, so it can run under `jit(out_shardings=...)` or `eval_shape`."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        ema_params=jax.tree.map(jnp.copy, params),
    )


def frozen_state(variables: dict) -> TrainState:
    """The state of a stage that is not trained here (a pretrained tokenizer): its variables as
    params (and as their EMA, the same arrays), no optimizer, step 0."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=(),
        model_state=rest,
        ema_params=params,
    )


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params (decay 0 tracks params exactly)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    ema_decay: float,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of any stage: grads of the injected objective, optax update, weight EMA.

    `metrics["nonfinite"]` is 1 when the loss or the gradient norm is NaN/Inf. With
    `skip_nonfinite` such a step keeps the previous parameters, optimizer and model state (the step
    counter still advances, so data and keys move on); otherwise the loop stops the run.
    """
    key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, key)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        model_state=model_state,
        ema_params=ema_update(state.ema_params, params, ema_decay),
    )
    if skip_nonfinite:
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        new_state = kept.replace(step=state.step + 1)
    nonfinite = 1.0 - finite.astype(jnp.float32)
    return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=nonfinite)


def eval_step(
    params: Any,
    model_state: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    objective: Objective,
) -> dict[str, jax.Array]:
    """The objective's metrics without an update (pass `ema_params` to judge the EMA weights)."""
    loss, (_, metrics) = objective(params, model_state, batch, key)
    return dict(metrics, loss=loss)
