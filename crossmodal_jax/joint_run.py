"""One run of a joint config (`config.task == "joint"`, e.g. configs/shapes_joint.py): a tokenizer
per task, then one generator for every task (stages/joint.py), then each task's evaluation.

The joint config holds a whole single-task config per task under `config.tasks.<task>`; each
becomes an `Experiment` whose workdir is `<workdir>/<task>` (its tokenizer stage, its evaluation's
captions and sample grids, its config.json and report.html), trained exactly as its single-task
run would train it (same config, seed and stage index: the same tokenizer). The joint generator
(`<workdir>/generator`) takes the joint config's `generator` block: model (the shared trunk),
train (the global batch and schedule), mixture (task -> weight: rows of each global batch) and
loss_weights (task -> weight of each of its examples in the loss). metrics.json holds every
task's metrics as `<task>/<metric>`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time

import flax.linen as nn
import jax
import ml_collections

from crossmodal_jax import tasks
from crossmodal_jax.config import validation
from crossmodal_jax.config.workdir import (
    check_workdir,
    write_data_fingerprint,
    write_resolved_config,
)
from crossmodal_jax.data.mixture import task_rows
from crossmodal_jax.errors import UserError
from crossmodal_jax.evaluation.evaluate import evaluate_run
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.report import write_results
from crossmodal_jax.stages import joint, tokenizer
from crossmodal_jax.stages.generators import NAME as GENERATOR
from crossmodal_jax.stages.tokenizer_source import attach_tokenizer, check_tokenizer_source
from crossmodal_jax.training import sharding, throughput, workdir_lock
from crossmodal_jax.training.loop import fit
from crossmodal_jax.training.stage import RunContext, restore_stage_state
from crossmodal_jax.training.step import TrainState

log = logging.getLogger("crossmodal_jax")

JOINT_STAGES = (tokenizer.NAME, GENERATOR)


def is_joint(config: ml_collections.ConfigDict) -> bool:
    return config.get("task") == tasks.JOINT


def tokenizer_owners(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Task -> the task whose tokenizer it uses (config.tokenizer_of; "" = its own)."""
    return {name: owner for name, owner in config.get("tokenizer_of", {}).items() if owner}


def tokenizer_sources(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Task -> the workdir whose finished tokenizer it uses (config.tokenizer_from; "" = none)."""
    return {name: path for name, path in config.get("tokenizer_from", {}).items() if path}


def task_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Task `name`'s config as this joint run trains it: the joint run's stages, the joint trunk
    in its generator.model (its view is that model), and its share of the joint generator's batch
    and steps (its data pipeline and evaluation read them); with `tokenizer_of`, another task's
    tokenizer block instead of its own stage; with `tokenizer_from`, no tokenizer stage (its
    tokenizer is restored from that workdir)."""
    c = ml_collections.ConfigDict(copy.deepcopy(config.tasks[name].to_dict()))
    c.stages = tuple(config.stages)
    owner = tokenizer_owners(config).get(name)
    if owner:  # another task's tokenizer: its block
        c.tokenizer = copy.deepcopy(config.tasks[owner].tokenizer)
    if owner or name in tokenizer_sources(config):  # no tokenizer stage of its own
        c.stages = tuple(s for s in c.stages if s != tokenizer.NAME)
    c.tokenizer_from = tokenizer_sources(config).get(name, "")
    c.generator.model.update(preset="", **config.generator.model)
    rows = task_rows(config.generator.train.batch_size, dict(config.generator.mixture))
    c.generator.train.batch_size = rows[name]
    c.generator.train.steps = config.generator.train.steps
    return c


def check_joint(config: ml_collections.ConfigDict) -> None:
    """One-line UserErrors for the joint config's own keys."""
    for stage in config.stages:
        if stage not in JOINT_STAGES:
            raise UserError(f"unknown stage {stage!r}; available: {', '.join(JOINT_STAGES)}")
    if not config.tasks:
        raise UserError("config.tasks: a joint run needs at least one task")
    for name in config.tasks:
        if name not in tasks.TASKS:
            raise UserError(
                f"config.tasks.{name}: unknown task; available: {', '.join(tasks.TASKS)}"
            )
        if config.tasks[name].task != name:
            raise UserError(
                f"config.tasks.{name}.task is {config.tasks[name].task!r}; it must be {name!r}"
            )
    owners = tokenizer_owners(config)
    for name, owner in owners.items():
        if name not in config.tasks or owner not in config.tasks:
            raise UserError(f"tokenizer_of.{name}={owner!r}: both must be tasks of config.tasks")
        if owner == name or owner in owners:
            raise UserError(
                f"tokenizer_of.{name}={owner!r}: name a task that trains its own tokenizer"
            )
    for name, c in config.tasks.items():
        if c.get("tokenizer_from"):  # one place to say it: the joint level's per-task key
            raise UserError(
                f"tasks.{name}.tokenizer_from: set tokenizer_from.{name} of the joint config instead"
            )
        if c.get("text_encoder"):
            raise UserError(
                f"tasks.{name}.text_encoder: a pretrained text encoder is not supported in joint "
                "runs yet (train the task alone with it)"
            )
        if c.get("generator", {}).get("init_from"):
            raise UserError(
                f"tasks.{name}.generator.init_from: starting from a DiT checkpoint is not "
                "supported in joint runs yet (the tasks share one trunk)"
            )
    for name in tokenizer_sources(config):
        if name not in config.tasks:
            raise UserError(f"tokenizer_from.{name}: {name!r} is not a task of config.tasks")
        if name in owners:
            raise UserError(
                f"tokenizer_from.{name} and tokenizer_of.{name} both give {name} a tokenizer; "
                "set one of them"
            )
    mixture = dict(config.generator.mixture)
    if set(mixture) != set(config.tasks):
        raise UserError(
            f"generator.mixture names tasks {sorted(mixture)}, config.tasks holds "
            f"{sorted(config.tasks)}: give every task a weight"
        )
    try:
        task_rows(config.generator.train.batch_size, mixture)
    except ValueError as e:
        raise UserError(f"generator.mixture: {e}") from e
    weights = dict(config.generator.get("loss_weights", {}))
    if set(weights) != set(config.tasks):
        raise UserError(
            f"generator.loss_weights names tasks {sorted(weights)}, config.tasks holds "
            f"{sorted(config.tasks)}: give every task a weight"
        )
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise UserError(f"generator.loss_weights.{name}={w!r}: a finite number >= 0")
    if not any(weights.values()):
        raise UserError("generator.loss_weights: every weight is 0; give a task weight > 0")
    if config.eval.every > 0:
        raise UserError("eval.every: a joint run evaluates at the end only; set it to 0")


def build_task_experiments(
    config: ml_collections.ConfigDict, workdir: str, mesh, rules, *, validate: bool = True
) -> dict[str, Experiment]:
    """Every task's checked Experiment, in `<workdir>/<task>`, on the joint run's mesh."""
    exps = {}
    profile_steps = throughput.parse_profile_steps(config.profile_steps)
    for name in sorted(config.tasks):
        c = task_config(config, name)
        task_dir = os.path.join(workdir, name)
        ctx = RunContext(task_dir, mesh, rules, c.seed, config.peak_tflops, profile_steps)
        if validate:
            validation.check_names(c)
        exp = Experiment.build(c, ctx)
        elsewhere = name in tokenizer_owners(config) or name in tokenizer_sources(config)
        if validate:
            check_tokenizer_source(f"tokenizer_from.{name}", c)
            validation.validate(exp, tokenizer_elsewhere=elsewhere)
        exps[name] = exp
    for name, owner in tokenizer_owners(config).items():
        if exps[name].input_shape != exps[owner].input_shape:
            raise UserError(
                f"tokenizer_of.{name}={owner!r}: {name}'s inputs are {exps[name].task.continuous} "
                f"of shape {exps[name].input_shape}, {owner}'s tokenizer reads "
                f"{exps[owner].task.continuous} of shape {exps[owner].input_shape}"
            )
    return exps


def link_shared_tokenizers(config: ml_collections.ConfigDict, exps: dict) -> None:
    """Give every task of `tokenizer_from` the finished tokenizer of the workdir it names, then
    every task of `tokenizer_of` its owner's trained tokenizer (trained in this run, or restored
    from the owner's folder or source)."""
    for exp in exps.values():
        attach_tokenizer(exp)
    for name, owner in tokenizer_owners(config).items():
        exps[name].results[tokenizer.NAME] = tokenizer.tokenizer_state(exps[owner])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train a tokenizer per task and the joint generator, evaluate every task; returns metrics."""
    t_run = time.perf_counter()
    check_joint(config)
    mesh, rules = sharding.mesh_from_config(config.mesh)
    exps = build_task_experiments(config, workdir, mesh, rules)
    check_workdir(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock.run_lock(workdir):
        return _run(config, workdir, exps, t_run)


def _run(config, workdir: str, exps: dict[str, Experiment], t_run: float) -> dict:
    write_resolved_config(config, workdir)
    for exp in exps.values():
        os.makedirs(os.path.join(exp.ctx.workdir, GENERATOR), exist_ok=True)  # sample grids
        write_resolved_config(exp.config, exp.ctx.workdir)
        write_data_fingerprint(exp.dataset, exp.ctx.workdir)
    first = next(iter(exps.values()))
    mesh, rules = first.ctx.mesh, first.ctx.rules
    ctx = RunContext(
        workdir, mesh, rules, config.seed, first.ctx.peak_tflops, first.ctx.profile_steps
    )
    log.info("joint run of %s on mesh %s", ", ".join(exps), dict(mesh.shape))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for name, exp in exps.items():
            if tokenizer.NAME in exp.config.stages:  # not a task of tokenizer_of
                log.info("[%s] tokenizer of %s", name, exp.dataset.described)
                spec = tokenizer.tokenizer_stage(exp)
                exp.results[tokenizer.NAME] = fit(spec, exp.ctx, stage_index=0)
        link_shared_tokenizers(config, exps)
        joint.attach_joint_model(exps, config.generator.model)
        if GENERATOR in config.stages:
            spec = joint.joint_generator_stage(exps, config.generator)
            state = fit(spec, ctx, stage_index=1)
            for name, exp in exps.items():
                exp.results[GENERATOR] = joint.view_state(state, name)
        metrics = {}
        if config.eval.at_end:
            for name, exp in exps.items():
                task_metrics = evaluate_run(exp)
                _write_task_report(exp, task_metrics, time.perf_counter() - t_run)
                metrics.update({f"{name}/{k}": v for k, v in task_metrics.items()})
    if jax.process_index() == 0:
        log.info("final metrics: %s", json.dumps(metrics, sort_keys=True))
        report = write_results(workdir, config, metrics, time.perf_counter() - t_run)
        log.info("wrote %s and %s", os.path.join(workdir, "metrics.json"), report)
    return metrics


def _write_task_report(exp: Experiment, metrics: dict, seconds: float) -> None:
    if jax.process_index() == 0:
        write_results(exp.ctx.workdir, exp.config, metrics, seconds)


def local_task_experiments(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> dict:
    """Every task's Experiment of a trained joint workdir on this process's devices (or
    `devices`), data-parallel, without the run's validation (the sample CLI, notebooks)."""
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    rules = sharding.rules_from_config(config.mesh.rules)
    exps = build_task_experiments(config, workdir, mesh, rules, validate=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        link_shared_tokenizers(config, exps)
    return exps


def restore_joint_state(config: ml_collections.ConfigDict, workdir: str, exps: dict) -> TrainState:
    """The trained joint generator of a workdir (views attached to `exps`; each task's state is
    `joint.view_state(state, task)`); call inside the experiments' mesh and rules."""
    joint.attach_joint_model(exps, config.generator.model)
    spec = joint.joint_generator_stage(exps, config.generator)
    first = next(iter(exps.values()))
    ctx = RunContext(workdir, first.ctx.mesh, first.ctx.rules, config.seed)
    return restore_stage_state(spec, ctx)
