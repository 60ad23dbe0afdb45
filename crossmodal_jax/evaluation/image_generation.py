"""Distribution metrics of a text→image run on the test split (and the `novel` split where the
dataset has one).

Each caption of the split is turned into one image; the generated set is compared with the real:
  - `test_classifier_fd`: Fréchet distance in the hidden layer of a small MLP trained on the train
    split (image_metrics.FeatureClassifier), offline, for every dataset with class labels, with the
    MLP's accuracy on the generated images (`test_sample_class_accuracy`: does the image show the
    class its caption names?) and on the real test images (its ceiling);
  - on the shapes world, the detector trained on renders (shapes_detector.py) reads every image
    instead: `<split>_sample_attribute_accuracy/<attribute>` (and `/all`: every attribute its
    caption states), its ceiling on the real images `<split>_real_attribute_accuracy/all`, and
    `<split>_classifier_fd` in its hidden layer;
  - `test_fid`, `test_inception_score`: with InceptionV3 when `eval.inception_weights` names the
    weights file (models/inception.py); nothing is downloaded. With `eval.num_samples` > 0 they
    come from that many images generated across devices and processes (fid_eval.py), against
    `eval.reference_stats` or the test split's real images.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from crossmodal_jax.evaluation import fid_eval, image_metrics, shapes_detector, shapes_judge
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


def generate_split(
    exp: Experiment, generator_state, generate, split: str = "test", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """(real images of a split's first `limit` examples (default eval.num_examples), one image
    generated from each one's caption, labels or None, the captions).

    Batches are padded to `eval.batch_size`, so the sampler compiles once.
    """
    config = exp.config
    key = jax.random.fold_in(jax.random.key(config.seed), _TEST_SPLIT_SALT)
    if split != "test":  # another split, other noise
        key = jax.random.fold_in(key, exp.dataset.splits.index(split))
    size = config.eval.batch_size
    real, fake, labels, captions = [], [], [], []
    limit = config.eval.num_examples if limit is None else limit
    for i, batch in enumerate(exp.batches(split, size, limit=limit)):
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
        captions += exp.text.decode_batch(batch["text"])
    labels_np = np.concatenate(labels) if all(y is not None for y in labels) else None
    return np.concatenate(real), np.concatenate(fake), labels_np, captions


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


def shapes_metrics(
    exp: Experiment, split: str, real: np.ndarray, fake: np.ndarray, captions: list[str]
) -> dict[str, float]:
    """What the shapes detector reads in the generated and the real images of a split."""
    config = exp.config
    params = shapes_detector.load_or_train(
        config.data.data_dir or None, config.eval.detector_examples, config.eval.detector_steps
    )
    real_features, real_read = shapes_detector.read_images(params, real)
    fake_features, fake_read = shapes_detector.read_images(params, fake)
    fake_acc = shapes_judge.attribute_accuracy(fake_read, captions)
    fake_acc.pop("parsed")  # a detector's reading always parses
    return {
        f"{split}_classifier_fd": image_metrics.feature_frechet_distance(
            real_features, fake_features
        ),
        **{f"{split}_sample_attribute_accuracy/{k}": v for k, v in fake_acc.items()},
        f"{split}_real_attribute_accuracy/all": shapes_judge.attribute_accuracy(
            real_read, captions
        )["all"],
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
    """Every distribution metric of the text→image generator on the test split, and on the
    `novel` split where the dataset has one (the shapes world)."""
    metrics: dict[str, float] = {}
    shapes_world = exp.config.data.name in shapes_judge.DATASETS
    for split in [s for s in ("test", "novel") if s in exp.dataset.splits]:
        start = time.perf_counter()
        real, fake, labels, captions = generate_split(exp, generator_state, generate, split)
        log.info(
            "generated %d %s-split images in %.1f s", len(fake), split, time.perf_counter() - start
        )
        if shapes_world:
            metrics.update(shapes_metrics(exp, split, real, fake, captions))
        else:
            metrics.update(classifier_metrics(exp, real, fake, labels))
        if split == "test" and exp.config.eval.num_samples > 0:  # FID-50K style, sharded
            metrics.update(fid_eval.fid_metrics(exp, generator_state, generate))
        elif split == "test":
            metrics.update(inception_metrics(exp.config, real, fake))
    return metrics
