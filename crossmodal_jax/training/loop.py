"""The training loop: restore-or-init a stage, step it, log one step late, checkpoint, and stop
cleanly on preemption."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
from clu import parameter_overview

from crossmodal_jax.logs.progress import Progress, format_duration
from crossmodal_jax.logs.writers import MetricWriter, write_json
from crossmodal_jax.training import sharding, throughput
from crossmodal_jax.training.checkpoint import StageCheckpointer
from crossmodal_jax.training.guards import Preempted, PreemptionGuard, check_finite
from crossmodal_jax.training.stage import RunContext, StageSpec, abstract_state, fresh_state
from crossmodal_jax.training.step import TrainState, make_optimizer, train_step

log = logging.getLogger("crossmodal_jax")


def compile_step(spec: StageSpec, tx, state_shardings, state, batch, key, mesh):
    """The shared train_step of a stage compiled ahead of time for these arguments (state
    donated, shardings fixed), and its FLOPs on one device (XLA's cost analysis)."""
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
    jitted = jax.jit(
        partial(
            train_step,
            objective=spec.objective,
            tx=tx,
            ema_decay=spec.train_cfg.ema_decay,
            skip_nonfinite=spec.train_cfg.skip_nonfinite,
        ),
        in_shardings=(state_shardings, batch_shardings, sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    compiled = jitted.lower(state, batch, key).compile()
    return compiled, throughput.step_flops(compiled)


MESH_FILE = "mesh.json"


def record_mesh(stage_dir: str, mesh: jax.sharding.Mesh) -> dict | None:
    """Process 0: write the mesh this run trains the stage on and return the last run's, if any
    (other processes: None).

    Checkpoints restore onto any mesh that divides the global batch (elastic resume: a job that
    comes back on another slice), so the mesh is not part of the checkpoint; this note only lets
    the log (process 0's) say that it changed. Only process 0 touches the file: another process
    reading it while process 0 rewrites it would see half a file."""
    if jax.process_index() != 0:
        return None
    path = os.path.join(stage_dir, MESH_FILE)
    previous = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except ValueError:  # half a file from a version that wrote it in place: only a log note
            previous = None
    os.makedirs(stage_dir, exist_ok=True)
    write_json(path, dict(mesh.shape))
    return previous


def fit(
    spec: StageSpec,
    ctx: RunContext,
    *,
    stage_index: int,
    evaluate: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> TrainState:
    """Train one stage to `train_cfg.steps`, resuming from its checkpoints; returns the final state.

    `evaluate(state)`, when given, runs every `eval_every` steps; its scalars are logged under
    `eval/` (metrics.jsonl, TensorBoard) and its time is left out of the step rate."""
    cfg = spec.train_cfg
    stage_dir = os.path.join(ctx.workdir, spec.name)
    key = jax.random.fold_in(jax.random.key(ctx.seed), stage_index)
    init_key, step_key = jax.random.split(key)
    tx, lr_schedule = make_optimizer(cfg)
    init_fn, abstract, state_shardings = abstract_state(spec, tx, init_key, ctx)

    data_iter = spec.make_iterator()
    ckpt = StageCheckpointer(
        os.path.join(stage_dir, "checkpoints"),
        keep=cfg.keep_checkpoints,
        save_every=cfg.checkpoint_every,
    )
    restored = ckpt.restore(abstract, data_iter)
    previous_mesh = record_mesh(stage_dir, ctx.mesh)
    if restored is not None:
        step, state = restored
        log.info("[%s] resuming from step %d (%s)", spec.name, step, ckpt.directory)
        if previous_mesh and previous_mesh != dict(ctx.mesh.shape):
            log.info(
                "[%s] the mesh changed since the last run: %s -> %s; the checkpoint was "
                "resharded onto the new one",
                spec.name,
                previous_mesh,
                dict(ctx.mesh.shape),
            )
    else:
        state = fresh_state(spec, init_fn, init_key)
        n_params = parameter_overview.count_parameters(state.params)
        log.info("[%s] initialised %s parameters", spec.name, f"{n_params:,}")
    start = int(state.step)
    if start >= cfg.steps:
        log.info("[%s] already trained (%d/%d steps); skipping", spec.name, start, cfg.steps)
        ckpt.close()
        _close(data_iter)
        return state

    writer = MetricWriter(stage_dir)
    t_start = time.perf_counter()
    try:
        with PreemptionGuard() as guard:
            loop = _Loop(
                spec,
                ctx,
                tx,
                lr_schedule,
                state_shardings,
                step_key,
                data_iter,
                ckpt,
                writer,
                guard,
                evaluate if eval_every > 0 else None,
                eval_every,
                throughput.ProfileWindow(ctx.profile_steps, stage_dir),
            )
            state = _train_loop(loop, state, start)
    finally:
        ckpt.close()  # waits for async saves: a stage returns only once its checkpoint is whole
        writer.close()
        _close(data_iter)
    log.info(
        "[%s] finished %d steps in %s",
        spec.name,
        cfg.steps - start,
        format_duration(time.perf_counter() - t_start),
    )
    return state


@dataclasses.dataclass
class _Loop:
    """What one stage's training loop works with."""

    spec: StageSpec
    ctx: RunContext
    tx: Any
    lr_schedule: Callable
    state_shardings: Any
    step_key: jax.Array
    data_iter: Any
    ckpt: StageCheckpointer
    writer: MetricWriter
    guard: PreemptionGuard
    evaluate: Callable[[TrainState], dict[str, float]] | None
    eval_every: int
    profile: throughput.ProfileWindow


def _train_loop(loop: _Loop, state: TrainState, start: int) -> TrainState:
    """Steps `start..steps`; logs one step late (async dispatch) and checks finiteness before saves."""
    try:
        return _steps(loop, state, start)
    finally:
        loop.profile.stop()  # a run stopped inside the window still writes its trace


def _steps(loop: _Loop, state: TrainState, start: int) -> TrainState:
    spec, ckpt, writer = loop.spec, loop.ckpt, loop.writer
    cfg = spec.train_cfg
    step_fn = rates = None
    progress = Progress(spec.name, start, cfg.steps)
    pending = None  # metrics of a logged step, read one step late so dispatch stays async
    previous = None  # (step, metrics) of the step before: its NaN check runs one step late
    skipped = 0  # updates dropped for non-finite values (skip_nonfinite=True)

    def log_pending():
        _log_scalars(writer, progress, rates, *pending, loop.lr_schedule, skipped)

    for step in range(start, cfg.steps):
        batch = sharding.global_batch(next(loop.data_iter), loop.ctx.mesh)
        if step_fn is None:
            step_fn, flops = compile_step(
                spec, loop.tx, loop.state_shardings, state, batch, loop.step_key, loop.ctx.mesh
            )
            device_kind = loop.ctx.mesh.devices.flat[0].device_kind
            peak = throughput.device_peak_tflops(device_kind, loop.ctx.peak_tflops)
            rates = throughput.Throughput(cfg.batch_size, flops, peak)
        done = step + 1
        loop.profile.before(done)
        state, metrics = step_fn(state, batch, loop.step_key)
        loop.profile.after(done, metrics)
        if previous is not None:
            skipped += _count_or_stop(spec.name, cfg, *previous)
        previous = (done, metrics)
        if pending is not None:
            log_pending()
            pending = None
        if step == start:
            jax.block_until_ready(metrics)  # exclude compilation from the step rate
            progress.mark_started(done)
        if done % cfg.log_every == 0 or done == cfg.steps:
            pending = (done, metrics)
        stop = loop.guard.should_stop()
        if stop or done == cfg.steps or ckpt.is_due(done):
            skipped += _count_or_stop(spec.name, cfg, *previous)  # never save a NaN state
            previous = None
            ckpt.save(done, state, loop.data_iter, force=True)
        if stop:
            if pending is not None:
                log_pending()
            ckpt.wait()
            raise Preempted(
                f"[{spec.name}] stopped at step {done}/{cfg.steps} and saved a checkpoint; "
                "rerun the same command to resume"
            )
        if spec.summarize and cfg.images_every and done % cfg.images_every == 0:
            spec.summarize(state, done, writer)
        if loop.evaluate and done % loop.eval_every == 0:
            if pending is not None:  # in step order in metrics.jsonl
                log_pending()
                pending = None
            _evaluate(loop, progress, state, done)
    if pending is not None:
        log_pending()
    if spec.summarize and not (cfg.images_every and cfg.steps % cfg.images_every == 0):
        spec.summarize(state, cfg.steps, writer)
    return state


def _evaluate(loop: _Loop, progress: Progress, state: TrainState, step: int) -> None:
    """The periodic evaluation at `step`: logged under eval/, its time kept out of the step rate."""
    t0 = time.perf_counter()
    scalars = {f"eval/{k}": v for k, v in loop.evaluate(state).items()}
    loop.writer.scalars(step, scalars)
    seconds = time.perf_counter() - t0
    progress.exclude(seconds)
    if jax.process_index() == 0:
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
        name, total = loop.spec.name, progress.total
        log.info("[%s] %d/%d evaluation (%.1f s): %s", name, step, total, seconds, shown)


def _count_or_stop(stage: str, cfg, step: int, metrics: dict) -> int:
    """1 if that step's update was skipped for NaN/Inf; raises NonFiniteLoss when not skipping."""
    if cfg.skip_nonfinite:
        return int(jax.device_get(metrics["nonfinite"]) > 0)
    check_finite(stage, step, metrics)
    return 0


def _close(data_iter) -> None:
    """Stop grain workers now rather than in interpreter teardown (which prints noise)."""
    if hasattr(data_iter, "close"):
        data_iter.close()


def _log_scalars(writer, progress, rates, step, metrics, lr_schedule, skipped: int) -> None:
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    scalars["skipped_updates"] = float(skipped)
    scalars["learning_rate"] = float(lr_schedule(step - 1))
    rate = progress.rate(step)
    if rate == rate:
        scalars["steps_per_sec"] = rate
        scalars.update(rates.scalars(rate))
    writer.scalars(step, scalars)
    if jax.process_index() == 0:
        log.info(
            progress.line(
                step,
                {k: scalars[k] for k in ("loss", "grad_norm") if k in scalars}
                | {k: v for k, v in scalars.items() if k in ("psnr", "codebook_usage")},
                throughput.describe(scalars),
            )
        )
