"""What the embedded digits datasets let evaluation judge: which digit a generated 8×8 image
shows (an SVC on raw pixels trained on the digits *train* split, 95 %+ on the real test split, so
it never sees the test images), and every acceptable caption of a digits image."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from crossmodal_jax import data

# Text→image datasets the SVC judge knows.
DIGIT_DATASETS = ("digits",)


@lru_cache(maxsize=4)
def digit_classifier(name: str, data_dir: str | None):
    """SVC on raw pixels (0..16) of the train split: the judge of generated digits."""
    from sklearn.svm import SVC

    train = data.load_arrays(name, "train", data_dir)
    clf = SVC(gamma=0.001, C=10.0)
    clf.fit(train["image"].reshape(len(train["image"]), -1).astype(np.float64), train["label"])
    return clf


def classify_images(images_unit: np.ndarray, name: str, data_dir: str | None) -> np.ndarray:
    """Predicted digit of images in [-1, 1], mapped back to the dataset's 0..16 ink scale."""
    max_value = data.get_spec(name).image_max_value
    raw = (np.asarray(images_unit, np.float64) + 1.0) * (max_value / 2.0)
    return digit_classifier(name, data_dir).predict(raw.reshape(len(raw), -1))


def digit_prompts(per_digit: int) -> tuple[list[str], np.ndarray]:
    """`per_digit` copies of "the digit <word>" for each digit, and the digit each one names."""
    words = data.NUMBER_WORDS
    prompts = [f"the digit {w}" for w in words for _ in range(per_digit)]
    labels = np.repeat(np.arange(len(words)), per_digit)
    return prompts, labels


def digit_accuracy(
    images: np.ndarray, labels: np.ndarray, name: str, data_dir: str | None
) -> dict[str, float]:
    """How often the judge sees the prompted digit: overall and per digit."""
    pred = classify_images(images, name, data_dir)
    per_class = {
        f"sample_digit_accuracy/{w}": float(np.mean(pred[labels == i] == i))
        for i, w in enumerate(data.NUMBER_WORDS)
    }
    return {"sample_digit_accuracy": float(np.mean(pred == labels)), **per_class}


def _digits_references(caption: str, label: int) -> list[str]:
    # Every template is a right caption of a digits image: score against all of them.
    return [t.format(word=data.NUMBER_WORDS[label]) for t in data.CAPTION_TEMPLATES]


# Datasets whose examples have several acceptable captions; others use their own caption only.
MULTI_REFERENCES = {"digits": _digits_references}
