"""image_metrics.py: the Fréchet distance against closed forms of two Gaussians, the Inception
Score at its bounds, and the feature classifier on the embedded digits."""

import numpy as np
import pytest
import scipy.linalg

from crossmodal_jax import data
from crossmodal_jax.evaluation import image_metrics


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_one_dimensional_gaussians():
    # N(m1, s1²) vs N(m2, s2²): d² = (m1 - m2)² + (s1 - s2)².
    for m1, s1, m2, s2 in [(0.0, 1.0, 3.0, 2.0), (1.5, 0.5, -1.0, 0.25), (2.0, 1.0, 2.0, 1.0)]:
        got = image_metrics.frechet_distance([m1], [[s1**2]], [m2], [[s2**2]])
        assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-10)


def test_frechet_distance_of_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.2, 3.0, 5), rng.uniform(0.2, 3.0, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = image_metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_distance_of_full_covariances_matches_the_general_square_root():
    # The formula as FID papers write it, Tr((Σ1 Σ2)^½) by scipy's general matrix square root;
    # the implementation uses the symmetric form instead.
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    cross = scipy.linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * cross)
    assert image_metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert image_metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(2)
    d, n = 3, 200_000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    want = image_metrics.frechet_distance(mu1, s1, mu2, s2)
    assert image_metrics.feature_frechet_distance(a, b) == pytest.approx(want, rel=0.02)
    assert image_metrics.feature_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_singular_covariances():
    # Fewer samples than dimensions, and a feature that is always 0 (a dead ReLU unit).
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 1.0
    a[:, 0] = b[:, 0] = 0.0
    value = image_metrics.feature_frechet_distance(a, b)
    assert np.isfinite(value) and value > 14.0  # the means alone are 15 apart
    # Rank-one covariances along one axis: N(0, diag(4, 0)) vs N(0, diag(1, 0)) → (2 - 1)².
    got = image_metrics.frechet_distance(
        np.zeros(2), np.diag([4.0, 0]), np.zeros(2), np.diag([1.0, 0])
    )
    assert got == pytest.approx(1.0, abs=1e-12)


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="mismatched"):
        image_metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N>=2"):
        image_metrics.gaussian_stats(np.zeros((1, 4)))


def test_inception_score_bounds():
    k = 10
    same = np.tile(np.linspace(-1, 1, k), (50, 1))  # every image: the same class distribution
    assert image_metrics.inception_score(same)[0] == pytest.approx(1.0)
    confident = 50.0 * np.eye(k)[np.arange(100) % k]  # sure, and spread evenly over all classes
    assert image_metrics.inception_score(confident)[0] == pytest.approx(k, rel=1e-6)
    half = 50.0 * np.eye(k)[np.arange(100) % 5]  # sure, over 5 of the 10 classes
    mean, std = image_metrics.inception_score(half, splits=2)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_feature_classifier_separates_real_from_noise(tmp_path):
    train = data.load_arrays("digits", "train", tmp_path)
    test = data.load_arrays("digits", "test", tmp_path)
    unit = lambda x: x.astype(np.float64) / 8.0 - 1.0  # 0..16 ink → [-1, 1]
    clf = image_metrics.FeatureClassifier(hidden=32, max_iter=200)
    clf.fit(unit(train["image"][:1000]), train["label"][:1000])
    assert clf.accuracy(unit(test["image"]), test["label"]) > 0.85
    features = clf.features(unit(test["image"]))
    assert features.shape == (len(test["image"]), 32) and (features >= 0).all()
    half = len(test["image"]) // 2
    real_a, real_b = unit(test["image"][:half]), unit(test["image"][half:])
    noise = np.random.default_rng(0).uniform(-1, 1, real_b.shape)
    near = image_metrics.feature_frechet_distance(clf.features(real_a), clf.features(real_b))
    far = image_metrics.feature_frechet_distance(clf.features(real_a), clf.features(noise))
    assert far > 5 * near
