"""Do text→image samples show the prompted digit? Judged by classifiers independent of the run.

  python benchmarks/sample_quality.py --workdir=runs/vqdit_img [--per_digit=30] [--seed=0]

Writes `per_digit` prompts "the digit <word>" per digit, runs the `sample` CLI on them (so the PNGs are
exactly what users get), and classifies the PNGs with three scikit-learn classifiers trained on all
1797 `load_digits` images (kNN, MLP, logistic regression; not the SVC that metrics.json uses).
Last line: one JSON object with each classifier's accuracy and per-digit accuracies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASSIFIERS = {
    "knn3": lambda: KNeighborsClassifier(3),
    "mlp": lambda: MLPClassifier((128,), max_iter=1000, random_state=0),
    "logreg": lambda: LogisticRegression(max_iter=5000),
}


def fit_classifiers() -> dict:
    """CLASSIFIERS fitted on all 1797 `load_digits` images (pixels 0..16)."""
    digits = load_digits()
    return {name: make().fit(digits.data, digits.target) for name, make in CLASSIFIERS.items()}


def judge(classifiers: dict, images_u8: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """Each classifier's accuracy and per-digit accuracies on uint8 images [N, 8, 8] (0..255)."""
    x = images_u8.reshape(len(images_u8), -1).astype(np.float64) / 255.0 * 16.0  # -> 0..16
    result = {}
    for name, clf in classifiers.items():
        pred = clf.predict(x)
        per = {w: round(float(np.mean(pred[labels == i] == i)), 3) for i, w in enumerate(WORDS)}
        result[name] = {"accuracy": round(float(np.mean(pred == labels)), 4), "per_digit": per}
    return result


def main(argv) -> None:
    del argv
    n = _PER_DIGIT.value
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.txt")
        with open(prompts, "w") as f:
            f.writelines(f"the digit {w}\n" for w in WORDS for _ in range(n))
        out = os.path.join(tmp, "out")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "crossmodal_jax.sample",
                f"--workdir={_WORKDIR.value}",
                f"--input={prompts}",
                f"--output={out}",
                f"--seed={_SEED.value}",
            ],
            check=True,
        )
        files = sorted(os.listdir(out))
        images = np.stack([np.asarray(Image.open(os.path.join(out, p))) for p in files])
    labels = np.repeat(np.arange(10), n)
    result = {"samples": len(images)}
    result.update(judge(fit_classifiers(), images, labels))
    for name in CLASSIFIERS:
        print(f"{name}: {result[name]['accuracy']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    # Flags only when run as a script: other benchmarks import judge() next to crossmodal_jax.sample,
    # which defines --workdir and --seed too.
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqdit_img", "A trained text→image workdir.")
    _PER_DIGIT = flags.DEFINE_integer("per_digit", 30, "Samples per digit prompt.")
    _SEED = flags.DEFINE_integer("seed", 0, "Sampling seed passed to the sample CLI.")
    app.run(main)
