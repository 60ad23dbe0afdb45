"""Sample digit accuracy and sampling time of a trained text→image workdir, per guidance scale/sampler.

  python benchmarks/guidance_sweep.py --workdir=runs/vqdit_img [--per_digit=20] \
      [--guidance=1,2,3,4,6] [--ddim_steps=10,25,50]

Accuracy is judged by the same train-split SVC as metrics.json. Last line: one JSON object with a row
per setting: {"guidance", "ddim_steps", "accuracy", "seconds"}.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
from absl import app, flags

from crossmodal_jax import evaluate, sharding, stages
from crossmodal_jax.train import RunContext, load_resolved_config

_WORKDIR = flags.DEFINE_string("workdir", "runs/vqdit_img", "A trained text→image workdir.")
_PER_DIGIT = flags.DEFINE_integer("per_digit", 20, "Samples per digit prompt.")
_GUIDANCE = flags.DEFINE_list("guidance", ["1", "2", "3", "4", "6"], "Guidance scales.")
_STEPS = flags.DEFINE_list("ddim_steps", ["50"], "DDIM step counts.")


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = sharding.rules_from_config(config.mesh.rules)
    rows = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ctx = RunContext(config=config, workdir=_WORKDIR.value, mesh=mesh, rules=rules, results={})
        state = stages.restore_stage_state(ctx, "generator", stages.generator_stage(ctx))
        for steps in map(int, _STEPS.value):
            for scale in map(float, _GUIDANCE.value):
                config.generator.sample.update(guidance=scale, steps=steps, sampler="ddim")
                evaluate.sample_accuracy(ctx, state, 1)  # compile outside the timing
                t0 = time.perf_counter()
                acc, _ = evaluate.sample_accuracy(ctx, state, _PER_DIGIT.value)
                row = {
                    "guidance": scale,
                    "ddim_steps": steps,
                    "accuracy": round(acc["sample_digit_accuracy"], 4),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                print(row)
                rows.append(row)
    print(json.dumps({"per_digit": _PER_DIGIT.value, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
