"""What the text→image benchmarks (guidance_sweep.py, recipe_compare.py) measure for one sampler
setting of a trained workdir: the figures metrics.json reports, on the same images.

- digits: the train-split SVC's accuracy on `per_digit` samples of each "the digit <word>" prompt,
  and the classifier Fréchet distance and class accuracy of the images generated from the test
  captions (evaluation/image_generation.py);
- the shapes world: the detector's all-attributes, colour and shape accuracy and the classifier
  Fréchet distance, on the test and novel captions.

A helper module of the benchmark scripts (run from this folder), not a script itself.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from crossmodal_jax.evaluation import (
    digits_judge,
    evaluate,
    image_generation,
    image_metrics,
    shapes_judge,
)
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages.generators import sampler
from crossmodal_jax.stages.tokenizer import tokenizer_variables


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


def quality_row(exp: Experiment, state, per_digit: int) -> dict[str, float]:
    """The figures of the workdir's current `generator.sample` settings (the sampler is rebuilt
    and compiled first, outside the timing). `seconds` is the wall time of generating and scoring
    every image of the row."""
    sampler(exp, rebuild=True)
    # Compiles the sampler: batches are padded to eval.batch_size, so every call has one shape.
    evaluate.generate_for_prompts(
        exp, state, exp.text.decode_batch(exp.first_examples("test", 1)["text"])
    )
    shapes_world = exp.config.data.name in shapes_judge.DATASETS
    start = time.perf_counter()
    row: dict[str, float] = {}
    if not shapes_world:
        row["accuracy"] = round(sample_accuracy(exp, state, per_digit)["sample_digit_accuracy"], 4)
    dist = image_generation.image_distribution_metrics(exp, state, sampler(exp))
    if shapes_world:
        for split in ("test", "novel"):
            for attr in ("all", "color", "shape"):
                value = dist[f"{split}_sample_attribute_accuracy/{attr}"]
                row[f"{split}_{attr}"] = round(value, 4)
            row[f"{split}_classifier_fd"] = round(dist[f"{split}_classifier_fd"], 2)
    else:
        row["classifier_fd"] = round(dist["test_classifier_fd"], 3)
        row["class_accuracy"] = round(dist["test_sample_class_accuracy"], 4)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row
