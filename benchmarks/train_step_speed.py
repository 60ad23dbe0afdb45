"""Steady-state speed of the shared train_step for each stage of a config (compile excluded).

  python benchmarks/train_step_speed.py --config=configs/vqdit_img.py [--steps=30] [--config.x=y]

Prints one line per stage, then (last line) one JSON object: {stage: {"ms_per_step", "steps_per_sec",
"compile_s", "params"}}. The tokenizer is freshly initialised, not trained: speed does not depend on it.
"""

from __future__ import annotations

import json
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from clu import parameter_overview
from ml_collections import config_flags

from crossmodal_jax.errors import UserError, fail
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.run import build_experiment
from crossmodal_jax.stages.registry import STAGES
from crossmodal_jax.training import sharding
from crossmodal_jax.training.loop import compile_step
from crossmodal_jax.training.stage import abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vqdit_img.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per stage (after one compiling step).")


def time_stage(name: str, exp: Experiment, steps: int) -> dict:
    ctx = exp.ctx
    spec = STAGES[name](exp)
    tx, _ = make_optimizer(spec.train_cfg)
    init_fn, _, shardings = abstract_state(spec, tx, jax.random.key(0), ctx)
    state = fresh_state(spec, init_fn, jax.random.key(0))
    it = spec.make_iterator()
    batches = [sharding.global_batch(next(it), ctx.mesh) for _ in range(steps + 1)]
    t0 = time.perf_counter()
    step_fn, _ = compile_step(spec, tx, shardings, state, batches[0], jax.random.key(1), ctx.mesh)
    state, metrics = step_fn(state, batches[0], jax.random.key(1))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch, jax.random.key(1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    exp.results[name] = state  # the generator stage freezes this (untrained) tokenizer
    return {
        "ms_per_step": round(ms, 2),
        "steps_per_sec": round(1000 / ms, 2),
        "compile_s": round(compile_s, 2),
        "params": int(parameter_overview.count_parameters(state.params)),
        "batch_size": spec.train_cfg.batch_size,
    }


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        try:
            exp = build_experiment(config, workdir)  # config.mesh.shape, checked like a run
        except UserError as e:
            fail(str(e))
        with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
            for name in config.stages:
                results[name] = time_stage(name, exp, _STEPS.value)
                print(f"{name}: {results[name]}")
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
