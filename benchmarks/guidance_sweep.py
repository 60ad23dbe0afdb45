"""Sample quality of a trained text→image workdir per guidance scale/sampler: digit accuracy,
classifier Fréchet distance, sampling time.

  python benchmarks/guidance_sweep.py --workdir=runs/vqdit_img [--per_digit=20] \
      [--guidance=1,2,3,4,6] [--ddim_steps=10,25,50]

Accuracy is judged by the same train-split SVC as metrics.json; the Fréchet distance and the class
accuracy of the images generated from the test captions by the same feature classifier
(evaluate_images.py). Two reference distances in that feature space put the numbers in scale:
train images vs the test images (as good as a generator can get with this many images) and the
tokenizer's reconstructions vs the test images (the decoder's ceiling). Last line: one JSON object
{"per_digit", "reference": {...}, "rows": [{"guidance", "ddim_steps", "accuracy", "classifier_fd",
"class_accuracy", "seconds"}]}.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from crossmodal_jax import evaluate, evaluate_images, image_metrics, sharding, stages
from crossmodal_jax.train import RunContext, load_resolved_config

_WORKDIR = flags.DEFINE_string("workdir", "runs/vqdit_img", "A trained text→image workdir.")
_PER_DIGIT = flags.DEFINE_integer("per_digit", 20, "Samples per digit prompt.")
_GUIDANCE = flags.DEFINE_list("guidance", ["1", "2", "3", "4", "6"], "Guidance scales.")
_STEPS = flags.DEFINE_list("ddim_steps", ["50"], "DDIM step counts.")


def reference_distances(ctx) -> dict[str, float]:
    """Classifier Fréchet distances of train images and of reconstructions to the test images."""
    config = ctx.config
    test_x, _ = evaluate_images.split_images(config, "test", config.eval.num_examples)
    train_x, train_y = evaluate_images.split_images(
        config, "train", config.eval.classifier_examples
    )
    clf = image_metrics.FeatureClassifier(seed=config.seed).fit(train_x, train_y)
    pick = np.random.default_rng(0).choice(len(train_x), len(test_x), replace=False)
    tokenizer, tok_vars = stages.build_tokenizer(config), stages.tokenizer_variables(ctx)
    recon, _ = jax.jit(lambda x: tokenizer.apply(tok_vars, x, train=False))(test_x)
    recon = np.asarray(recon)
    fd = lambda x: image_metrics.feature_frechet_distance(clf.features(test_x), clf.features(x))
    return {
        "train_vs_test_fd": round(fd(train_x[pick]), 3),
        "reconstructions_vs_test_fd": round(fd(recon), 3),
    }


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = sharding.rules_from_config(config.mesh.rules)
    rows = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ctx = RunContext(config=config, workdir=_WORKDIR.value, mesh=mesh, rules=rules, results={})
        state = stages.restore_stage_state(ctx, "generator", stages.generator_stage(ctx))
        reference = reference_distances(ctx)
        print(reference)
        for steps in map(int, _STEPS.value):
            for scale in map(float, _GUIDANCE.value):
                config.generator.sample.update(guidance=scale, steps=steps, sampler="ddim")
                evaluate.sample_accuracy(ctx, state, 1)  # compile outside the timing
                t0 = time.perf_counter()
                acc, _ = evaluate.sample_accuracy(ctx, state, _PER_DIGIT.value)
                seconds = time.perf_counter() - t0
                dist = evaluate_images.image_distribution_metrics(ctx, state)
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
