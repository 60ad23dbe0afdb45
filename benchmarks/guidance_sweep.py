"""Sample quality of a trained text→image workdir per guidance scale/sampler: digit accuracy,
classifier Fréchet distance, sampling time.

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
"classifier_fd", "class_accuracy", "seconds"}]}.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.evaluation import (
    digits_judge,
    evaluate,
    image_generation,
    image_metrics,
    shapes_judge,
)
from crossmodal_jax.experiment import Experiment, local_experiment
from crossmodal_jax.stages.generators import generator_stage, sampler
from crossmodal_jax.stages.tokenizer import tokenizer_variables
from crossmodal_jax.training.stage import restore_stage_state

_WORKDIR = flags.DEFINE_string("workdir", "runs/vqdit_img", "A trained text→image workdir.")
_PER_DIGIT = flags.DEFINE_integer("per_digit", 20, "Samples per digit prompt.")
_GUIDANCE = flags.DEFINE_list("guidance", ["1", "2", "3", "4", "6"], "Guidance scales.")
_STEPS = flags.DEFINE_list("ddim_steps", ["50"], "DDIM step counts.")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 0, "Captions per split for the distribution metrics (0 = the config's)."
)


def reference_distances(exp: Experiment) -> dict[str, float]:
    """Classifier Fréchet distances of train images and of reconstructions to the test images."""
    config = exp.config
    test_x, _ = image_generation.split_images(exp, "test", config.eval.num_examples)
    train_x, train_y = image_generation.split_images(exp, "train", config.eval.classifier_examples)
    clf = image_metrics.FeatureClassifier(seed=config.seed).fit(train_x, train_y)
    pick = np.random.default_rng(0).choice(len(train_x), len(test_x), replace=False)
    tokenizer, tok_vars = exp.tokenizer, tokenizer_variables(exp)
    recon, _ = jax.jit(lambda x: tokenizer.apply(tok_vars, x, train=False))(test_x)
    recon = np.asarray(recon)
    fd = lambda x: image_metrics.feature_frechet_distance(clf.features(test_x), clf.features(x))
    return {
        "train_vs_test_fd": round(fd(train_x[pick]), 3),
        "reconstructions_vs_test_fd": round(fd(recon), 3),
    }


def sample_accuracy(exp: Experiment, state, per_digit: int) -> dict[str, float]:
    """The digit judge's accuracy on `per_digit` images of each "the digit <word>" prompt."""
    prompts, labels = digits_judge.digit_prompts(per_digit)
    images = evaluate.generate_for_prompts(exp, state, prompts)
    data_dir = exp.config.data.data_dir or None
    return digits_judge.digit_accuracy(images, labels, exp.config.data.name, data_dir)


def shapes_sweep(exp: Experiment, state) -> None:
    """Rows of the detector's scores (test and novel) per guidance scale and DDIM step count."""
    rows = []
    for steps in map(int, _STEPS.value):
        for scale in map(float, _GUIDANCE.value):
            exp.config.generator.sample.update(guidance=scale, steps=steps, sampler="ddim")
            t0 = time.perf_counter()
            dist = image_generation.image_distribution_metrics(
                exp, state, sampler(exp, rebuild=True)
            )
            row = {
                "guidance": scale,
                "ddim_steps": steps,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            for split in ("test", "novel"):
                row[f"{split}_all"] = round(dist[f"{split}_sample_attribute_accuracy/all"], 4)
                row[f"{split}_color"] = round(dist[f"{split}_sample_attribute_accuracy/color"], 4)
                row[f"{split}_shape"] = round(dist[f"{split}_sample_attribute_accuracy/shape"], 4)
                row[f"{split}_classifier_fd"] = round(dist[f"{split}_classifier_fd"], 2)
            print(row, flush=True)
            rows.append(row)
    print(json.dumps({"num_examples": exp.config.eval.num_examples, "rows": rows}))


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    if _NUM_EXAMPLES.value:
        config.eval.num_examples = _NUM_EXAMPLES.value
    exp = local_experiment(config, _WORKDIR.value)
    rows = []
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        state = restore_stage_state(generator_stage(exp), exp.ctx)
        if config.data.name in shapes_judge.DATASETS:
            return shapes_sweep(exp, state)
        reference = reference_distances(exp)
        print(reference)
        for steps in map(int, _STEPS.value):
            for scale in map(float, _GUIDANCE.value):
                config.generator.sample.update(guidance=scale, steps=steps, sampler="ddim")
                sampler(exp, rebuild=True)  # built (and jitted) per setting
                sample_accuracy(exp, state, 1)  # compile outside the timing
                t0 = time.perf_counter()
                acc = sample_accuracy(exp, state, _PER_DIGIT.value)
                seconds = time.perf_counter() - t0
                dist = image_generation.image_distribution_metrics(exp, state, sampler(exp))
                row = {
                    "guidance": scale,
                    "ddim_steps": steps,
                    "accuracy": round(acc["sample_digit_accuracy"], 4),
                    "classifier_fd": round(dist["test_classifier_fd"], 3),
                    "class_accuracy": round(dist["test_sample_class_accuracy"], 4),
                    "seconds": round(seconds, 2),
                }
                print(row)
                rows.append(row)
    print(json.dumps({"per_digit": _PER_DIGIT.value, "reference": reference, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
