"""One run of a config: validate → build the Experiment → fit each stage → evaluate → report.

`run(config, workdir)` is what `python -m crossmodal_jax.main` calls; researchers may call it too.
"""

from __future__ import annotations

import json
import logging
import os
import time

import flax.linen as nn
import jax
import ml_collections

from crossmodal_jax.config import validation
from crossmodal_jax.config.workdir import write_data_fingerprint, write_resolved_config
from crossmodal_jax.evaluation.evaluate import evaluate_run
from crossmodal_jax.evaluation.periodic import periodic_evaluator
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.report import write_results
from crossmodal_jax.stages.registry import STAGES
from crossmodal_jax.stages.tokenizer_source import attach_tokenizer, check_tokenizer_source
from crossmodal_jax.training import sharding, throughput, workdir_lock
from crossmodal_jax.training.loop import fit
from crossmodal_jax.training.stage import RunContext

log = logging.getLogger("crossmodal_jax")


def build_experiment(
    config: ml_collections.ConfigDict, workdir: str, mesh_shape=None
) -> Experiment:
    """The checked Experiment of a config: one-line UserError for anything it cannot run, before
    anything is compiled or written. `mesh_shape` (default: config.mesh.shape) places it."""
    mesh, rules = sharding.mesh_from_config(config.mesh, mesh_shape)
    validation.check_names(config)
    check_tokenizer_source("tokenizer_from", config)
    profile_steps = throughput.parse_profile_steps(config.profile_steps)  # checked just above
    ctx = RunContext(workdir, mesh, rules, config.seed, config.peak_tflops, profile_steps)
    exp = Experiment.build(config, ctx)
    validation.validate(exp, tokenizer_elsewhere=bool(config.tokenizer_from))
    return exp


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train every stage in `config.stages`, evaluate, write metrics.json; returns the metrics."""
    t_run = time.perf_counter()
    exp = build_experiment(config, workdir)  # before the workdir is touched
    os.makedirs(workdir, exist_ok=True)
    # One run per workdir (process 0 holds the lock for all); refused before anything is written.
    with workdir_lock.run_lock(workdir):
        return _run(exp, config, workdir, t_run)


def _run(exp: Experiment, config: ml_collections.ConfigDict, workdir: str, t_run: float) -> dict:
    write_resolved_config(config, workdir)
    write_data_fingerprint(exp.dataset, workdir)
    mesh, rules = exp.ctx.mesh, exp.ctx.rules
    log.info(
        "mesh %s over %d devices (%s), %d process(es)",
        dict(mesh.shape),
        mesh.size,
        jax.devices()[0].platform,
        jax.process_count(),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        attach_tokenizer(exp)
        for index, name in enumerate(config.stages):
            if name in exp.results:  # a tokenizer from elsewhere (tokenizer_from)
                log.info("[%s] from %s: not trained here", name, config.tokenizer_from)
                continue
            spec = STAGES[name](exp)
            every = config.eval.every
            evaluate = periodic_evaluator(exp, spec) if every > 0 else None
            exp.results[name] = fit(
                spec, exp.ctx, stage_index=index, evaluate=evaluate, eval_every=every
            )
        metrics = evaluate_run(exp) if config.eval.at_end else {}
    if jax.process_index() == 0:
        log.info("final metrics: %s", json.dumps(metrics, sort_keys=True))
        report = write_results(workdir, config, metrics, time.perf_counter() - t_run)
        log.info("wrote %s and %s", os.path.join(workdir, "metrics.json"), report)
    return metrics
