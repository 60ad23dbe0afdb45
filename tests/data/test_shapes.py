"""The shapes world against DESIGN §4: pixel geometry, palette, positions, relations, captions, and
held-out (colour, shape) pairs that never reach `train` or `test`."""

import re

import numpy as np
import pytest

from crossmodal_jax.data import moving_shapes, shapes, sources

COLOR = "|".join(shapes.COLORS)
SHAPE = "|".join(shapes.SHAPES)
ONE = re.compile(
    rf"^a (small|large) ({COLOR}) ({SHAPE}) at ({'|'.join(shapes.POSITIONS.values())})$"
)
TWO = re.compile(rf"^a ({COLOR}) ({SHAPE}) (left of|right of|above|below) a ({COLOR}) ({SHAPE})$")
MOVING = re.compile(rf"^a ({COLOR}) ({SHAPE}) moves (up|down|left|right)$")


def _one(shape, cx=16.0, cy=16.0, s=8, color="red"):
    return shapes.render([{"color": color, "shape": shape, "cx": cx, "cy": cy, "size": s}])


def test_a_square_on_pixel_edges_is_an_exact_block_of_its_colour():
    img = _one("square")  # |x - 16| <= 4: pixel centres 12.5 ... 19.5, every sub-pixel inside
    expected = np.zeros((32, 32, 3), np.uint8)
    expected[12:20, 12:20] = shapes.COLORS["red"]
    np.testing.assert_array_equal(img, expected)


@pytest.mark.parametrize(
    "shape, area",
    [
        ("circle", np.pi * 4**2),
        ("square", 8.0**2),
        ("triangle", 8.0 * 8.0 / 2),
        ("cross", 2 * (8 / 3) * 8 - (8 / 3) ** 2),
    ],
)
def test_each_shape_covers_its_area_and_sits_where_it_should(shape, area):
    cov = shapes.coverage(shape, 15.3, 16.7, 8)  # off the pixel grid: partial pixels
    assert abs(cov.sum() - area) <= 1.5  # 16 samples a pixel: the area to about a pixel
    assert set(np.unique(cov * 16)) <= set(range(17))  # fractions of the 16 sub-pixel centres
    ys, xs = np.nonzero(cov)
    assert xs.min() >= int(15.3 - 4) and xs.max() <= int(15.3 + 4)
    assert ys.min() >= int(16.7 - 4) and ys.max() <= int(16.7 + 4)


def test_triangle_points_up_and_the_cross_has_arms_of_a_third():
    tri = shapes.coverage("triangle", 16, 16, 12)
    assert tri[11].sum() < tri[20].sum()  # narrow at the apex row, wide at the base
    cross = shapes.coverage("cross", 16, 16, 12)  # arms |.| <= 2 around 16: columns 14..17
    assert cross[10, 14:18].tolist() == [1.0] * 4 and cross[10, 13] == 0 and cross[10, 18] == 0


def test_pixels_are_the_colour_times_the_covered_fraction():
    img = _one("circle", cx=15.9, cy=16.2, s=8, color="cyan").astype(np.float64)
    cov = shapes.coverage("circle", 15.9, 16.2, 8)
    np.testing.assert_allclose(img, np.rint(cov[..., None] * shapes.COLORS["cyan"]), atol=0)
    assert shapes.COLORS == {
        "red": (230, 40, 40),
        "green": (40, 200, 60),
        "blue": (50, 90, 230),
        "yellow": (235, 215, 40),
        "magenta": (210, 60, 210),
        "cyan": (40, 210, 220),
    }


def test_a_later_object_is_painted_over_an_earlier_one():
    objs = [
        {"color": "red", "shape": "square", "cx": 16.0, "cy": 16.0, "size": 14},
        {"color": "blue", "shape": "square", "cx": 16.0, "cy": 16.0, "size": 8},
    ]
    img = shapes.render(objs)
    assert (
        tuple(img[16, 16]) == shapes.COLORS["blue"] and tuple(img[10, 10]) == shapes.COLORS["red"]
    )


@pytest.fixture(scope="module")
def splits():
    return {split: [shapes.example(split, i) for i in range(600)] for split in shapes.SPLITS}


def _pairs(caption):
    m = ONE.match(caption)
    if m:
        return [(m[2], m[3])]
    m = TWO.match(caption)
    assert m, caption
    return [(m[1], m[2]), (m[4], m[5])]


def test_captions_follow_the_grammar_and_held_out_pairs_stay_in_novel(splits):
    for split, records in splits.items():
        captions = [r["caption"].decode() for r in records]
        held = [sum(p in shapes.HELD_OUT for p in _pairs(c)) for c in captions]
        if split == "novel":
            assert all(h == 1 for h in held)
        else:
            assert not any(held), split
        ones = sum(bool(ONE.match(c)) for c in captions)
        assert 0.4 < ones / len(captions) < 0.6  # half one-object scenes


def test_one_object_scenes_sit_at_their_grid_position(splits):
    grid = {word: cell for cell, word in shapes.POSITIONS.items()}
    for r in splits["train"]:
        m = ONE.match(r["caption"].decode())
        if not m:
            continue
        size, color, shape, (row, col) = shapes.SIZES[m[1]], m[2], m[3], grid[m[4]]
        cx, cy = (float(v) for v in r["centers"][0])
        assert abs(cx - (8 + 8 * col)) <= 1 and abs(cy - (8 + 8 * row)) <= 1
        obj = {"color": color, "shape": shape, "cx": cx, "cy": cy, "size": size}
        # The image is the contract's rendering of the caption's object at the stored centre
        # (stored as float32: a boundary sub-pixel may flip, 1/16 of the colour).
        assert np.abs(shapes.render([obj]).astype(int) - r["image"].astype(int)).max() <= 15


def test_two_object_scenes_keep_their_relation_and_colours_differ(splits):
    for r in splits["test"]:
        if r["count"] != 2:
            continue
        m = TWO.match(r["caption"].decode())
        assert m[1] != m[4]  # different colours
        (x1, y1), (x2, y2) = r["centers"]
        assert min(x1, y1, x2, y2) >= 5 and max(x1, y1, x2, y2) <= 27
        along, across = {"left of": (x2 - x1, y1 - y2), "right of": (x1 - x2, y1 - y2)}.get(
            m[3], (y2 - y1, x1 - x2) if m[3] == "above" else (y1 - y2, x1 - x2)
        )
        assert 12 - 1e-4 <= along <= 18 + 1e-4 and abs(across) <= 3 + 1e-4


def test_moving_shapes_move_one_way_and_stay_inside():
    for split in ("train", "novel"):
        for r in (moving_shapes.example(split, i) for i in range(100)):
            m = MOVING.match(r["caption"].decode())
            assert m and ((m[1], m[2]) in shapes.HELD_OUT) == (split == "novel")
            video = r["video"].astype(np.float64)
            assert video.shape == (8, 32, 32, 3)
            mass = video.sum(-1)
            ys, xs = np.mgrid[:32, :32] + 0.5
            cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2))
            cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2))
            moved = {
                "up": -np.diff(cy),
                "down": np.diff(cy),
                "left": -np.diff(cx),
                "right": np.diff(cx),
            }
            speed = moved[m[3]]
            assert np.allclose(speed, r["speed"], atol=0.3) and r["speed"] in (1, 2)


def test_the_moving_smoke_set_is_the_first_clips_of_each_split(tmp_path):
    for split, size in moving_shapes.SMOKE_SPLIT_SIZES.items():
        smoke = sources.get_source("moving_shapes_smoke", split, tmp_path)
        assert len(smoke) == size
        for i in (0, size - 1):
            want = moving_shapes.example(split, i)
            assert smoke[i]["caption"] == want["caption"]
            np.testing.assert_array_equal(smoke[i]["video"], want["video"])


def test_splits_have_their_sizes_and_are_deterministic():
    assert shapes.SPLIT_SIZES == {"train": 20000, "test": 2000, "novel": 1000}
    a, b = shapes.example("test", 7), shapes.example("test", 7)
    assert a["caption"] == b["caption"] and np.array_equal(a["image"], b["image"])
    assert shapes.example("train", 7)["caption"] != a["caption"] or not np.array_equal(
        shapes.example("train", 7)["image"], a["image"]
    )


def test_shapes_are_embedded_datasets_with_a_novel_split(tmp_path):
    assert sources.get_spec("shapes").splits == ("train", "test", "novel")
    with pytest.raises(ValueError, match="unknown split 'valid' for dataset 'shapes'"):
        sources.get_source("shapes", "valid", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'novel' for dataset 'digits'"):
        sources.get_source("digits", "novel", tmp_path)


def test_spoken_shapes_read_the_scenes_captions_in_held_out_voices():
    from crossmodal_jax.data import spoken_digits, spoken_shapes

    for split in shapes.SPLITS:
        u = spoken_shapes.utterance(split, 3)
        assert u.text == shapes.example(split, 3)["caption"].decode()
        assert u.variant in spoken_shapes.VOICES[split]
        assert 130 <= u.speed <= 190 and 30 <= u.pitch <= 70 and 20 <= u.snr_db <= 40
    assert set(spoken_shapes.VOICES["novel"]) == set(spoken_digits.VARIANTS["test"])
    assert not set(spoken_shapes.VOICES["train"]) & set(spoken_shapes.VOICES["test"])
    records = spoken_shapes.generate_split("novel", count=2)
    assert [r["caption"] for r in records] == [
        shapes.example("novel", i)["caption"] for i in (0, 1)
    ]
    assert all(r["audio"].dtype == np.int16 and len(r["audio"]) > 8000 for r in records)


def test_the_canonical_caption_is_the_same_for_both_captions_of_a_picture():
    assert shapes.canonical_caption("a red circle right of a blue square") == (
        "a blue square left of a red circle"
    )
    assert shapes.canonical_caption("a red circle below a blue square") == (
        "a blue square above a red circle"
    )
    for caption in ("a blue square left of a red circle", "a small red square at top right"):
        assert shapes.canonical_caption(caption) == caption

    class Echo:
        def map(self, element):
            return element

    record = shapes.example("train", 3)
    out = shapes.CanonicalCaptions(Echo()).map(
        {**record, "caption": b"a red cross below a cyan circle"}
    )
    assert out["caption"] == b"a cyan circle above a red cross"
