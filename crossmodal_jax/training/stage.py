"""The stage interface: what the training loop needs to train one stage (`StageSpec`), where it
trains (`RunContext`), and the stage's state built abstractly, freshly or from its checkpoints.

Stage modules (crossmodal_jax/stages/) build `StageSpec`s; this package knows nothing about
tokenizers or diffusion, and imports nothing above it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from crossmodal_jax.logs.writers import MetricWriter
from crossmodal_jax.training import sharding
from crossmodal_jax.training.checkpoint import StageCheckpointer, abstract_like
from crossmodal_jax.training.step import Objective, TrainState, init_state, make_optimizer


@dataclasses.dataclass
class StageSpec:
    """Everything the loop needs to train one stage."""

    name: str  # "tokenizer" | "generator": names the stage's folder in the workdir
    train_cfg: ml_collections.ConfigDict  # steps, batch size, optimizer, logging cadence
    init_variables: Callable[[jax.Array], dict]  # key -> flax variables (logically boxed)
    objective: Objective
    make_iterator: Callable[[], Any]  # -> checkpointable grain iterator of local batches
    frozen_state: dict = dataclasses.field(default_factory=dict)  # arrays merged into model_state
    summarize: Callable[[TrainState, int, MetricWriter], None] | None = None  # images, texts
    # Fresh params -> the params training starts from (a pretrained checkpoint laid over them,
    # stages/init_from.py). Called by `fresh_state` only, so a resume never reads the checkpoint,
    # and on concrete arrays, so its weights are not baked into the traced init as constants.
    init_params: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Where stages train: the workdir, the mesh and its logical axis rules, the run's seed; and
    what the logs say of the hardware (config.peak_tflops, config.profile_steps)."""

    workdir: str
    mesh: jax.sharding.Mesh
    rules: tuple
    seed: int
    peak_tflops: float = 0.0  # one device's peak for the MFU; 0 = from throughput.PEAK_TFLOPS
    profile_steps: tuple[int, int] | None = None  # steps a..b of each stage traced by jax.profiler


def abstract_state(spec: StageSpec, tx, key, ctx: RunContext):
    """(init function, abstract state with shardings, shardings) without materialising anything."""

    def boxed(key):
        variables = dict(spec.init_variables(key))
        params = variables.pop("params")
        return init_state(params, variables, tx)

    boxed_abstract = jax.eval_shape(boxed, key)
    shardings = sharding.logical_shardings(boxed_abstract, ctx.mesh, ctx.rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        sharding.strip_boxes(boxed_abstract),
        shardings,
    )
    init_fn = jax.jit(lambda k: nn.meta.unbox(boxed(k)), out_shardings=shardings)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, spec.frozen_state)
    frozen_abstract = abstract_like(spec.frozen_state)
    abstract = abstract.replace(model_state={**abstract.model_state, **frozen_abstract})
    shardings = shardings.replace(model_state={**shardings.model_state, **frozen_shardings})
    return init_fn, abstract, shardings


def fresh_state(spec: StageSpec, init_fn: Callable, key: jax.Array) -> TrainState:
    """A newly initialised state with the stage's frozen arrays in its model_state.

    The frozen arrays are copied leaf by leaf: the step donates its state, which must neither free
    the caller's arrays nor receive one buffer twice.
    """
    state = init_fn(key)
    if spec.init_params is not None:  # the EMA starts from the same weights, in its own buffers
        params = spec.init_params(state.params)
        ema = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), params)
        state = state.replace(params=params, ema_params=ema)
    frozen = jax.tree.map(
        lambda x: jax.device_put(x, x.sharding, may_alias=False), spec.frozen_state
    )
    return state.replace(model_state={**state.model_state, **frozen})


def restore_stage_state(spec: StageSpec, ctx: RunContext) -> TrainState:
    """A finished stage's final state from `<workdir>/<name>/checkpoints`."""
    tx, _ = make_optimizer(spec.train_cfg)
    _, abstract, _ = abstract_state(spec, tx, jax.random.key(0), ctx)
    ckpt = StageCheckpointer(
        os.path.join(ctx.workdir, spec.name, "checkpoints"),
        keep=spec.train_cfg.keep_checkpoints,
        save_every=0,
    )
    restored = ckpt.restore(abstract)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"no {spec.name} checkpoint in {os.path.join(ctx.workdir, spec.name)}; train the "
            f"{spec.name} stage first (add {spec.name!r} to config.stages)"
        )
    return restored[1]
