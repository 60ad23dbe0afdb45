"""Distribution metrics of a text→image run on the test split.

Each test caption is turned into one image; the generated set is compared with the test images:
  - `test_classifier_fd`: Fréchet distance in the hidden layer of a small MLP trained on the train
    split (image_metrics.FeatureClassifier), offline, for every dataset with class labels, with the
    MLP's accuracy on the generated images (`test_sample_class_accuracy`: does the image show the
    class its caption names?) and on the real test images (its ceiling);
  - `test_fid`, `test_inception_score`: with InceptionV3 when `eval.inception_weights` names the
    weights file (models/inception.py); nothing is downloaded.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from crossmodal_jax.evaluation import image_metrics
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models import inception, inception_weights
from crossmodal_jax.stages.samplers import generate_in_batches

log = logging.getLogger("crossmodal_jax")

# Fold-in of the run seed for the test-split images (the digit grid uses 10**9).
_TEST_SPLIT_SALT = 10**9 + 1


def split_images(exp: Experiment, split: str, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` (0 = all) images of a split in [-1, 1], and their labels when the
    dataset has them."""
    images, labels = [], []
    for batch in exp.batches(split, exp.config.eval.batch_size, limit=limit):
        images.append(batch["image"])
        labels.append(batch.get("label"))
    has_labels = all(y is not None for y in labels)
    return np.concatenate(images), np.concatenate(labels) if has_labels else None


def generate_test_split(
    exp: Experiment, generator_state, generate
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(real test images, one image generated from each one's caption, labels or None).

    Batches are padded to `eval.batch_size`, so the sampler compiles once.
    """
    config = exp.config
    key = jax.random.fold_in(jax.random.key(config.seed), _TEST_SPLIT_SALT)
    size = config.eval.batch_size
    real, fake, labels = [], [], []
    for i, batch in enumerate(exp.batches("test", size, limit=config.eval.num_examples)):
        images = generate_in_batches(
            generate,
            generator_state,
            batch["text"],
            batch["text_mask"],
            jax.random.fold_in(key, i),
            size,
        )
        real.append(batch["image"])
        fake.append(images)
        labels.append(batch.get("label"))
    labels_np = np.concatenate(labels) if all(y is not None for y in labels) else None
    return np.concatenate(real), np.concatenate(fake), labels_np


def classifier_metrics(
    exp: Experiment, real: np.ndarray, fake: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """Classifier Fréchet distance and class accuracies; {} for a dataset without labels."""
    if labels is None:
        log.info("no class labels in %s: no classifier Fréchet distance", exp.dataset.described)
        return {}
    start = time.perf_counter()
    train_x, train_y = split_images(exp, "train", exp.config.eval.classifier_examples)
    clf = image_metrics.FeatureClassifier(seed=exp.config.seed).fit(train_x, train_y)
    log.info(
        "feature classifier: %d train images, %.1f s", len(train_x), time.perf_counter() - start
    )
    return {
        "test_classifier_fd": image_metrics.feature_frechet_distance(
            clf.features(real), clf.features(fake)
        ),
        "test_sample_class_accuracy": clf.accuracy(fake, labels),
        "test_real_class_accuracy": clf.accuracy(real, labels),
    }


def inception_metrics(config, real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """FID and Inception Score with the user's InceptionV3 weights; {} without a weights file."""
    if not config.eval.inception_weights:
        return {}
    # Grayscale images are repeated to RGB, and every image is resized to 299×299 (pytorch-fid).
    variables = inception_weights.load_inception_params(config.eval.inception_weights)
    real_features, _ = inception.inception_outputs(variables, real)
    fake_features, fake_logits = inception.inception_outputs(variables, fake)
    score, _ = image_metrics.inception_score(fake_logits, splits=1)
    return {
        "test_fid": image_metrics.feature_frechet_distance(real_features, fake_features),
        "test_inception_score": score,
    }


def image_distribution_metrics(exp: Experiment, generator_state, generate) -> dict[str, float]:
    """Every distribution metric of the text→image generator on the test split."""
    start = time.perf_counter()
    real, fake, labels = generate_test_split(exp, generator_state, generate)
    log.info("generated %d test-split images in %.1f s", len(fake), time.perf_counter() - start)
    return {
        **classifier_metrics(exp, real, fake, labels),
        **inception_metrics(exp.config, real, fake),
    }
