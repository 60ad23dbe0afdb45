"""moving_digits: split sizes, determinism, test-split hygiene, motion that follows the caption."""

import pickle
import re

import numpy as np
import pytest

from crossmodal_jax.data import digits, features, moving_digits, sources, text

CAPTION_RE = re.compile(
    r"^the digit (zero|one|two|three|four|five|six|seven|eight|nine) moves (up|down|left|right)$"
)


@pytest.fixture(scope="module")
def splits():
    return {split: moving_digits.generate_split(split) for split in moving_digits.SPLITS}


def _stack(records, key):
    return np.stack([np.asarray(r[key]) for r in records])


def test_sizes_fields_and_balanced_directions(splits):
    assert len(splits["train"]) == 4 * digits.TEST_START == 6000
    assert len(splits["test"]) == 4 * (digits.NUM_EXAMPLES - digits.TEST_START) == 1188
    for records in splits.values():
        r = records[0]
        assert set(r) == {"video", "label", "direction", "caption"}
        assert r["video"].shape == (8, 32, 32, 1) and r["video"].dtype == np.uint8
        assert r["label"].dtype == np.int32 and r["direction"].dtype == np.int32
        counts = np.bincount(_stack(records, "direction"), minlength=4)
        assert (counts == len(records) // 4).all()
    # Full ink of the digits data (16) becomes 255.
    assert int(_stack(splits["test"], "video").max()) == 255


def test_captions_are_exactly_the_contract(splits):
    for records in splits.values():
        for r in records:
            match = CAPTION_RE.match(r["caption"].decode("utf-8"))
            assert match, r["caption"]
            assert match.group(1) == digits.NUMBER_WORDS[int(r["label"])]
            assert match.group(2) == moving_digits.DIRECTIONS[int(r["direction"])]


def test_build_is_deterministic(splits):
    again = moving_digits.generate_split("test")
    for a, b in zip(splits["test"], again, strict=True):
        np.testing.assert_array_equal(a["video"], b["video"])
        assert a["caption"] == b["caption"] and a["label"] == b["label"]
    plan_a, plan_b = moving_digits.motion_plan("train"), moving_digits.motion_plan("train")
    for key in plan_a:
        np.testing.assert_array_equal(plan_a[key], plan_b[key])


def test_test_split_shows_only_test_images(splits):
    plan = moving_digits.motion_plan("test")
    assert plan["digit_index"].min() == digits.TEST_START
    assert plan["digit_index"].max() == digits.NUM_EXAMPLES - 1
    assert (moving_digits.motion_plan("train")["digit_index"] < digits.TEST_START).all()
    # By content too: every test video's first frame contains, at some offset, the sprite of a
    # test-split image with its label.
    images, labels = digits._load_raw()
    sprites = moving_digits.sprites(images)
    test_ids = range(digits.TEST_START, digits.NUM_EXAMPLES)
    test_sprites = {(int(labels[i]), sprites[i].tobytes()) for i in test_ids}
    for r in splits["test"]:
        frame = r["video"][0, :, :, 0]
        windows = np.lib.stride_tricks.sliding_window_view(frame, (16, 16)).reshape(-1, 256)
        # Only windows holding all the ink can be the sprite.
        full = windows[windows.astype(np.int64).sum(-1) == int(frame.astype(np.int64).sum())]
        assert any((int(r["label"]), w.tobytes()) in test_sprites for w in full)


def _centre_of_mass(video_TxHxW):
    mass = video_TxHxW.astype(np.float64)
    total = mass.sum(axis=(1, 2))
    rows = (mass.sum(axis=2) * np.arange(32)).sum(axis=1) / total
    cols = (mass.sum(axis=1) * np.arange(32)).sum(axis=1) / total
    return rows, cols


def test_motion_follows_caption_and_stays_on_canvas(splits):
    expected = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
    speeds = set()
    for records in splits.values():
        for r in records[::7]:
            video = r["video"][..., 0]
            ink = video.astype(np.int64).sum(axis=(1, 2))
            # Nothing leaves the canvas: the same ink in every frame.
            assert (ink == ink[0]).all() and ink[0] > 0
            rows, cols = _centre_of_mass(video)
            direction = r["caption"].decode().rsplit(" ", 1)[1]
            d_row, d_col = np.diff(rows), np.diff(cols)
            speed = float(np.rint(abs(d_row[0]) + abs(d_col[0])))
            assert speed in (1.0, 2.0)
            speeds.add(speed)
            np.testing.assert_allclose(d_row, expected[direction][0] * speed, atol=1e-9)
            np.testing.assert_allclose(d_col, expected[direction][1] * speed, atol=1e-9)
    assert speeds == {1.0, 2.0}


def test_positions_cover_the_canvas_range():
    plan = moving_digits.motion_plan("train")
    rows, cols = moving_digits.positions(plan)
    for coord in (rows, cols):
        assert coord.min() == 0 and coord.max() == 16  # starts reach both edges


def test_registry_cache_round_trip(tmp_path):
    source = sources.get_source("moving_digits", "test", tmp_path)
    assert len(source) == 1188
    direct = moving_digits.generate_split("test")[5]
    cached = source[5]
    np.testing.assert_array_equal(cached["video"], direct["video"])
    assert cached["caption"] == direct["caption"] and cached["direction"] == direct["direction"]
    assert sources.get_spec("moving_digits").image_max_value == 255


def test_video_text_features(splits):
    transform = pickle.loads(pickle.dumps(features.VideoTextFeatures(text_max_len=40)))
    r = splits["test"][3]
    out = transform.map(r)
    assert out["video"].shape == (8, 32, 32, 1) and out["video"].dtype == np.float32
    assert out["video"].min() == -1.0 and out["video"].max() <= 1.0
    assert out["text"].shape == (40,) and out["text_mask"].dtype == np.int32
    assert text.decode(out["text"]) == r["caption"].decode()
    assert out["label"] == r["label"]
