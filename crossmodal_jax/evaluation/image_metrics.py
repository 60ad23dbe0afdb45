"""Distribution metrics of generated images: Fréchet distance, Inception Score, and the small
classifier whose feature space the offline Fréchet distance uses.

The Fréchet distance between two Gaussians fitted to feature sets is

    d² = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

(Dowson & Landau 1982); FID is this distance in InceptionV3's pool features (Heusel et al. 2017).
InceptionV3 needs a weights file the user provides (models/inception.py); so that every text→image
run reports a distance offline, we also measure it in the hidden layer of a small MLP trained on
the same dataset's train split ("classifier Fréchet distance", lower is better, 0 for identical
distributions). Its scale depends on the classifier, so compare it between runs of one dataset only.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "FeatureClassifier",
    "feature_frechet_distance",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
]

log = logging.getLogger("crossmodal_jax")


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features [N, D], in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features [N>=2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((Σ₁Σ₂)^½) is computed in its symmetric form Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½) with symmetric
    eigendecompositions: exact for singular covariances (fewer samples than dimensions, a feature
    that is always 0), where the general matrix square root of Σ₁Σ₂ is ill-conditioned.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"mismatched statistics: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_covmean = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return float(max(value, 0.0))  # round-off can leave -1e-12 for identical sets


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; tiny negative eigenvalues (round-off) count as 0."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def feature_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def inception_score(logits: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))) of class logits [N, K]: mean and std over
    `splits` equal chunks (Salimans et al. 2016 use 10 splits of 50,000 samples). Between 1
    (every image gets the same class distribution) and K (confident and spread over all K)."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    scores = []
    for chunk in np.array_split(log_p, splits):
        log_marginal = logsumexp(chunk, axis=0) - np.log(len(chunk))
        kl = np.sum(np.exp(chunk) * (chunk - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


class FeatureClassifier:
    """A one-hidden-layer MLP (scikit-learn) trained to classify a dataset's train images; its
    hidden ReLU activations are the feature space of the classifier Fréchet distance, and its
    predictions judge which class a generated image shows.

    Images are [N, ...] in [-1, 1]; they are flattened, so any size works (8×8 digits: 64 inputs).
    """

    def __init__(self, hidden: int = 64, seed: int = 0, max_iter: int = 300):
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier(
            hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=max_iter, random_state=seed
        )

    def fit(self, images: np.ndarray, labels: np.ndarray) -> FeatureClassifier:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a few hundred epochs reach 95 %+; stopping early is fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(_flat(images), np.asarray(labels))
        return self

    def features(self, images: np.ndarray) -> np.ndarray:
        """Hidden-layer activations [N, hidden]: relu(x W₁ + b₁) of the fitted MLP."""
        w, b = self.model.coefs_[0], self.model.intercepts_[0]
        return np.maximum(_flat(images) @ w + b, 0.0)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(_flat(images))

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))


def _flat(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64)
    return x.reshape(len(x), -1)
