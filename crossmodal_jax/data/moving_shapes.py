"""The embedded `moving_shapes` dataset (DESIGN §4 contract): one coloured shape sliding across the
canvas of the shapes world (data/shapes.py renders it).

8 frames of 32×32 RGB; one object of side 10 moving `up`, `down`, `left` or `right` at 1 or 2 px a
frame, its centre inside [5, 27]² in every frame. Caption: `a <color> <shape> moves <direction>`.
`train` and `test` hold seen (colour, shape) pairs only; every `novel` clip a held-out one.
"""

from __future__ import annotations

import numpy as np

from crossmodal_jax.data import shapes

NAME = "moving_shapes"
VERSION = "1.0.0"
SPLITS = shapes.SPLITS
SPLIT_SIZES = {"train": 8000, "test": 1000, "novel": 500}
NUM_FRAMES = 8
IMAGE_MAX_VALUE = shapes.IMAGE_MAX_VALUE
SPEEDS = (1, 2)  # px per frame
# Index = the record's "direction" field; (dx, dy) per frame at speed 1.
DIRECTIONS = ("up", "down", "left", "right")
_STEP = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}
_SEED = 20261203


def caption(color: str, shape: str, direction: int) -> str:
    return f"a {color} {shape} moves {DIRECTIONS[direction]}"


def clip(rng: np.random.Generator, novel: bool) -> dict:
    """One clip's plan: pair, direction, speed and the centre in frame 0."""
    pool = shapes.NOVEL if novel else shapes.SEEN
    color, shape = pool[int(rng.integers(len(pool)))]
    direction = int(rng.integers(len(DIRECTIONS)))
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
    lo, hi = shapes.PAIR_CENTRE_RANGE
    travel = speed * (NUM_FRAMES - 1)
    dx, dy = _STEP[direction]
    # The moving coordinate needs room for the whole travel inside [lo, hi].
    x0 = rng.uniform(lo + travel * (dx < 0), hi - travel * (dx > 0))
    y0 = rng.uniform(lo + travel * (dy < 0), hi - travel * (dy > 0))
    return {
        "color": color,
        "shape": shape,
        "direction": direction,
        "speed": speed,
        "x0": x0,
        "y0": y0,
    }


def centers(plan: dict) -> np.ndarray:
    """The object's centre (x, y) in every frame: float64 [NUM_FRAMES, 2]."""
    dx, dy = _STEP[plan["direction"]]
    t = np.arange(NUM_FRAMES)
    return np.stack([plan["x0"] + dx * plan["speed"] * t, plan["y0"] + dy * plan["speed"] * t], -1)


def clip_record(plan: dict) -> dict:
    frames = [
        shapes.render(
            [
                {
                    "color": plan["color"],
                    "shape": plan["shape"],
                    "cx": x,
                    "cy": y,
                    "size": shapes.PAIR_SIZE,
                }
            ]
        )
        for x, y in centers(plan)
    ]
    return {
        "video": np.stack(frames),
        "caption": caption(plan["color"], plan["shape"], plan["direction"]).encode("utf-8"),
        "label": np.int32(shapes.pair_class(plan["color"], plan["shape"])),
        "direction": np.int32(plan["direction"]),
        "speed": np.int32(plan["speed"]),
    }


def example(split: str, index: int) -> dict:
    """Record `index` of a split: {"video": uint8 [8, 32, 32, 3], "caption", "label" (the (colour,
    shape) class), "direction", "speed"}; a fixed function of (split, index)."""
    shapes.check_split(NAME, split)
    rng = np.random.default_rng([_SEED, SPLITS.index(split), index])
    return clip_record(clip(rng, novel=split == "novel"))


def generate_split(split: str, count: int | None = None) -> list[dict]:
    """The first `count` records of a split in order (None: all)."""
    shapes.check_split(NAME, split)
    return [example(split, i) for i in range(SPLIT_SIZES[split] if count is None else count)]


# `moving_shapes_smoke`: the first records of each split, for smoke configs and tests (the codes
# of all 8,000 training clips took 31 s of every video→text smoke run).
SMOKE_NAME = "moving_shapes_smoke"
SMOKE_SPLIT_SIZES = {"train": 128, "test": 32, "novel": 32}


def generate_smoke_split(split: str) -> list[dict]:
    return generate_split(split, count=SMOKE_SPLIT_SIZES[split])
