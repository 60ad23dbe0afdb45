"""Sample quality of a trained text→image workdir per guidance scale and DDIM steps: digit accuracy,
classifier Fréchet distance, sampling time. benchmarks/recipe_compare.py compares samplers.

  python benchmarks/guidance_sweep.py --workdir=runs/vqdit_img [--per_digit=20] \
      [--guidance=1,2,3,4,6] [--ddim_steps=10,25,50]
  python benchmarks/guidance_sweep.py --workdir=runs/shapes_t2i --num_examples=300

On the shapes world a row holds what metrics.json reports there instead (the detector's
all-attributes accuracy and classifier Fréchet distance on the first `num_examples` test and
novel captions).

Accuracy is judged by the same train-split SVC as metrics.json; the Fréchet distance and the class
accuracy of the images generated from the test captions by the same feature classifier
(evaluation/image_generation.py). Two reference distances in that feature space put the numbers
in scale: train images vs the test images (as good as a generator can get with this many images)
and the tokenizer's reconstructions vs the test images (the decoder's ceiling). Last line: one
JSON object {"per_digit", "reference": {...}, "rows": [{"guidance", "ddim_steps", "accuracy",
"classifier_fd", "class_accuracy", "seconds"}]}, `seconds` being the wall time of generating and
scoring a row's images after the sampler's compilation (benchmarks/image_rows.py).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
from absl import app, flags
from image_rows import quality_row, reference_distances

from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.evaluation import shapes_judge
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.stages.generators import generator_stage
from crossmodal_jax.training.stage import restore_stage_state

_WORKDIR = flags.DEFINE_string("workdir", "runs/vqdit_img", "A trained text→image workdir.")
_PER_DIGIT = flags.DEFINE_integer("per_digit", 20, "Samples per digit prompt.")
_GUIDANCE = flags.DEFINE_list("guidance", ["1", "2", "3", "4", "6"], "Guidance scales.")
_STEPS = flags.DEFINE_list("ddim_steps", ["50"], "DDIM step counts.")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 0, "Captions per split for the distribution metrics (0 = the config's)."
)


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    if _NUM_EXAMPLES.value:
        config.eval.num_examples = _NUM_EXAMPLES.value
    exp = local_experiment(config, _WORKDIR.value)
    shapes_world = config.data.name in shapes_judge.DATASETS
    rows = []
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        state = restore_stage_state(generator_stage(exp), exp.ctx)
        reference = {} if shapes_world else reference_distances(exp)
        print(reference)
        for steps in map(int, _STEPS.value):
            for scale in map(float, _GUIDANCE.value):
                config.generator.sample.update(guidance=scale, steps=steps, sampler="ddim")
                row = {"guidance": scale, "ddim_steps": steps}
                row.update(quality_row(exp, state, _PER_DIGIT.value))
                print(row, flush=True)
                rows.append(row)
    if shapes_world:
        print(json.dumps({"num_examples": config.eval.num_examples, "rows": rows}))
    else:
        print(json.dumps({"per_digit": _PER_DIGIT.value, "reference": reference, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
