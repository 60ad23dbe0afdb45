"""The text→image judge of the shapes world: its targets are the caption's attributes in canonical
form, it learns them from renders, and it is trained once and cached."""

import jax
import numpy as np

from crossmodal_jax.data import shapes
from crossmodal_jax.evaluation import shapes_detector, shapes_judge


def _one_hot_heads(labels: list[dict]) -> dict[str, np.ndarray]:
    heads = {}
    for k, n in shapes_detector.HEADS.items():
        ids = np.asarray([max(y[k], 0) for y in labels])
        heads[k] = np.eye(n)[ids]
    return heads


def test_targets_read_back_as_the_canonical_caption():
    captions = [shapes.example(s, i)["caption"].decode() for s in shapes.SPLITS for i in range(60)]
    captions += [shapes_judge.converse(c) for c in captions]  # both forms of two-object scenes
    readings = shapes_detector.reading(
        _one_hot_heads([shapes_detector.caption_labels(c) for c in captions])
    )
    for caption, read in zip(captions, readings, strict=True):
        assert read == shapes_judge.canonical(shapes_judge.parse(caption)), caption
    assert shapes_judge.attribute_accuracy(readings, captions)["all"] == 1.0


def test_the_training_renders_hold_every_pair_and_both_scene_kinds():
    x, y = shapes_detector.render_training_set(2000)
    assert x.shape == (2000, 32, 32, 3) and -1.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y["count"])) == {0, 1}
    pairs = {(c, s) for c, s, n in zip(y["color"], y["shape"], y["count"], strict=True) if n == 0}
    assert len(pairs) == len(shapes.PAIRS)  # held-out pairs too: it judges novel prompts


def test_a_briefly_trained_detector_counts_and_sizes_fresh_renders(tmp_path):
    params = shapes_detector.load_or_train(str(tmp_path), 1000, 80)
    cached = shapes_detector._cache_path(str(tmp_path), 1000, 80)
    assert cached.is_file()
    shapes_detector.load_or_train.cache_clear()
    again = shapes_detector.load_or_train(str(tmp_path), 1000, 80)  # read from the file
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, again)))
    records = [shapes.example("test", i) for i in range(200)]
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 127.5 - 1.0
    features, readings = shapes_detector.read_images(params, images)
    assert features.shape == (200, 128)
    acc = shapes_judge.attribute_accuracy(readings, [r["caption"].decode() for r in records])
    assert acc["count"] >= 0.9 and acc["size"] >= 0.9, acc
