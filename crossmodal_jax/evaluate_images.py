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

from crossmodal_jax import generation, image_metrics

log = logging.getLogger("crossmodal_jax")

# Fold-in of the run seed for the test-split images (the digit grid uses 10**9).
_TEST_SPLIT_SALT = 10**9 + 1


def split_images(config, split: str, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` (0 = all) images of a split in [-1, 1], and their labels when the
    dataset has them."""
    from crossmodal_jax import data, stages

    source, transform = stages.model_source(config, split)
    images, labels = [], []
    for batch in data.make_eval_batches(
        source, batch_size=config.eval.batch_size, transform=transform
    ):
        images.append(batch["image"])
        labels.append(batch.get("label"))
        if limit and sum(map(len, images)) >= limit:
            break
    has_labels = all(y is not None for y in labels)
    images_np = np.concatenate(images)[: limit or None]
    labels_np = np.concatenate(labels)[: limit or None] if has_labels else None
    return images_np, labels_np


def generate_test_split(ctx, generator_state) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(real test images, one image generated from each one's caption, labels or None).

    Batches are padded to `eval.batch_size`, so the sampler compiles once.
    """
    from crossmodal_jax import generator_stages, stages

    config = ctx.config
    generate = generator_stages.image_generator(config)
    key = jax.random.fold_in(jax.random.key(config.seed), _TEST_SPLIT_SALT)
    limit = config.eval.num_examples or None
    size = config.eval.batch_size
    real, fake, labels = [], [], []
    for i, batch in enumerate(stages.test_batches(config, size)):
        images = generation.generate_in_batches(
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
        if limit and sum(map(len, real)) >= limit:
            break
    labels_np = np.concatenate(labels)[:limit] if all(y is not None for y in labels) else None
    return np.concatenate(real)[:limit], np.concatenate(fake)[:limit], labels_np


def classifier_metrics(
    config, real: np.ndarray, fake: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """Classifier Fréchet distance and class accuracies; {} for a dataset without labels."""
    if labels is None:
        log.info("no class labels in %s: no classifier Fréchet distance", config.data.name)
        return {}
    start = time.perf_counter()
    train_x, train_y = split_images(config, "train", config.eval.classifier_examples)
    clf = image_metrics.FeatureClassifier(seed=config.seed).fit(train_x, train_y)
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
    from crossmodal_jax.models import inception

    # Grayscale images are repeated to RGB, and every image is resized to 299×299 (pytorch-fid).
    variables = inception.load_inception_params(config.eval.inception_weights)
    real_features, _ = inception.inception_outputs(variables, real)
    fake_features, fake_logits = inception.inception_outputs(variables, fake)
    score, _ = image_metrics.inception_score(fake_logits, splits=1)
    return {
        "test_fid": image_metrics.feature_frechet_distance(real_features, fake_features),
        "test_inception_score": score,
    }


def image_distribution_metrics(ctx, generator_state) -> dict[str, float]:
    """Every distribution metric of the text→image generator on the test split."""
    start = time.perf_counter()
    real, fake, labels = generate_test_split(ctx, generator_state)
    log.info("generated %d test-split images in %.1f s", len(fake), time.perf_counter() - start)
    return {
        **classifier_metrics(ctx.config, real, fake, labels),
        **inception_metrics(ctx.config, real, fake),
    }
