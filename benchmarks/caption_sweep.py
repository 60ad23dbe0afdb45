"""Caption quality and sampling time of a trained X→text workdir, per MaskGIT sampler setting.

  python benchmarks/caption_sweep.py --workdir=runs/img2txt [--steps=8,20,40] \
      [--schedule=cosine,linear] [--temperature=0] [--num_examples=0]

Scores the test split exactly like metrics.json (evaluate.caption_test_split). Last line: one JSON
object with a row per setting: {"steps", "schedule", "temperature", <metrics>, "seconds"}.
"""

from __future__ import annotations

import itertools
import json
import time

import flax.linen as nn
import jax
from absl import app, flags

from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.evaluation import evaluate
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.stages.generators import generator_stage, sampler
from crossmodal_jax.training.stage import restore_stage_state

_WORKDIR = flags.DEFINE_string("workdir", "runs/img2txt", "A trained X→text workdir.")
_STEPS = flags.DEFINE_list("steps", ["8", "20", "40"], "MaskGIT step counts.")
_SCHEDULE = flags.DEFINE_list("schedule", ["cosine", "linear"], "Unmasking schedules.")
_TEMPERATURE = flags.DEFINE_list("temperature", ["0"], "Token sampling temperatures.")
_NUM = flags.DEFINE_integer("num_examples", 0, "Test examples (0 = the whole split).")


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    config.eval.num_examples = _NUM.value
    exp = local_experiment(config, _WORKDIR.value)
    rows = []
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        state = restore_stage_state(generator_stage(exp), exp.ctx)
        grid = itertools.product(
            map(int, _STEPS.value), _SCHEDULE.value, map(float, _TEMPERATURE.value)
        )
        for steps, schedule, temperature in grid:
            config.generator.sample.update(steps=steps, schedule=schedule, temperature=temperature)
            sampler(exp, rebuild=True)  # built (and jitted) per setting
            t0 = time.perf_counter()
            metrics, _, _ = evaluate.caption_test_split(exp, state)
            row = {
                "steps": steps,
                "schedule": schedule,
                "temperature": temperature,
                **{k: round(v, 4) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - t0, 2),  # compile included
            }
            print(row)
            rows.append(row)
    print(json.dumps({"workdir": _WORKDIR.value, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
