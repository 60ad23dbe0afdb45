"""The shapes world (DESIGN §4 contract): 32×32 RGB scenes of coloured shapes, and their captions.

Rendering. Black canvas; a pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5). Each
pixel is the object's colour times the fraction of its 4×4 sub-pixel centres
((j + (k + 0.5)/4, i + (l + 0.5)/4)) inside the shape, rounded to the nearest integer; a later object
is painted over an earlier one (wherever it covers any sub-pixel).

Shapes of side s centred at (cx, cy), h = s/2: `circle` (x−cx)² + (y−cy)² ≤ h²; `square` |x−cx| ≤ h
and |y−cy| ≤ h; `triangle` apex (cx, cy−h), base y = cy+h, inside when 0 ≤ t ≤ 1 and |x−cx| ≤ t·h with
t = (y−cy+h)/(2h); `cross` (|x−cx| ≤ s/6 and |y−cy| ≤ h) or (|y−cy| ≤ s/6 and |x−cx| ≤ h).

Scenes (`scene`): half of them hold one object, `a <size> <color> <shape> at <position>` (size small
s = 8 or large s = 14; centre (8 + 8·column, 8 + 8·row) of the 3×3 position grid plus uniform jitter
in [−1, 1] per axis); the other half two objects of different colours, s = 10, centres inside
[5, 27]², `a <color> <shape> <relation> a <color> <shape>` (the first 12–18 px from the second along
the relation's axis, at most 3 px across it).

Held-out (colour, shape) pairs (`HELD_OUT`) never appear in the `train` and `test` splits; every
`novel` example holds one (a two-object novel scene: exactly one of its objects).
"""

from __future__ import annotations

import grain
import numpy as np

CANVAS = 32
IMAGE_MAX_VALUE = 255
SPLITS = ("train", "test", "novel")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "magenta": (210, 60, 210),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
HELD_OUT = frozenset(
    {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")}
)
SIZES = {"small": 8, "large": 14}
# Position word by (row, column) of the 3×3 grid.
POSITIONS = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
# Relation word -> (axis the first object is offset along: 0 = x, 1 = y; sign of first − second).
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
# The relation that says the same of the two objects swapped.
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PAIR_SIZE = 10  # side of both objects of a two-object scene (and of moving_shapes' object)
PAIR_CENTRE_RANGE = (5.0, 27.0)  # centres of two-object scenes lie inside this square
PAIR_DISTANCE = (12.0, 18.0)  # along the relation's axis
PAIR_ACROSS = 3.0  # at most this far apart across it
PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)  # (colour, shape) class ids: their index
SEEN = tuple(p for p in PAIRS if p not in HELD_OUT)
NOVEL = tuple(p for p in PAIRS if p in HELD_OUT)

_SUB = (np.arange(4) + 0.5) / 4  # sub-pixel centre offsets inside a pixel
# Sub-pixel centres of the canvas, [row i, column j, 16 samples (l, k)]: x = j + (k + 0.5)/4 and
# y = i + (l + 0.5)/4.
_PIX = np.arange(CANVAS)
_X = np.broadcast_to(_PIX[None, :, None, None] + _SUB, (CANVAS, CANVAS, 4, 4)).reshape(
    CANVAS, CANVAS, 16
)
_Y = np.broadcast_to(_PIX[:, None, None, None] + _SUB[:, None], (CANVAS, CANVAS, 4, 4)).reshape(
    CANVAS, CANVAS, 16
)


def inside(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    """Whether points (x, y) lie inside the shape of side s centred at (cx, cy) (the contract's
    inequalities, boundaries included)."""
    h = s / 2
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= h**2
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        t = (dy + h) / (2 * h)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * h)
    if shape == "cross":
        arm = s / 6
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= h)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= h))
    raise ValueError(f"unknown shape {shape!r}; available: {', '.join(SHAPES)}")


def coverage(shape: str, cx: float, cy: float, s: float) -> np.ndarray:
    """Fraction of each pixel's 16 sub-pixel centres inside the shape: float64 [32, 32]. Only
    the pixels of the shape's bounding square are tested (every shape lies inside it)."""
    h = s / 2
    r0, r1 = max(0, int(np.floor(cy - h))), min(CANVAS, int(np.floor(cy + h)) + 1)
    c0, c1 = max(0, int(np.floor(cx - h))), min(CANVAS, int(np.floor(cx + h)) + 1)
    out = np.zeros((CANVAS, CANVAS))
    box = (slice(r0, r1), slice(c0, c1))
    out[box] = inside(shape, _X[box], _Y[box], cx, cy, s).mean(axis=-1)
    return out


def render(objects: list[dict]) -> np.ndarray:
    """uint8 [32, 32, 3]: the objects ({"color", "shape", "cx", "cy", "size"}) painted in order."""
    canvas = np.zeros((CANVAS, CANVAS, 3), np.float64)
    for obj in objects:
        cov = coverage(obj["shape"], obj["cx"], obj["cy"], obj["size"])
        painted = cov[..., None] * np.asarray(COLORS[obj["color"]], np.float64)
        canvas = np.where(cov[..., None] > 0, painted, canvas)
    return np.rint(canvas).astype(np.uint8)


def canonical_caption(caption: str) -> str:
    """`a X right of a Y` -> `a Y left of a X`, `a X below a Y` -> `a Y above a X`; every other
    caption unchanged. A two-object picture has two right captions (nothing in it shows which
    object came first); this is one of them, the same for both."""
    for relation in ("right of", "below"):
        first, marker, second = caption.partition(f" {relation} a ")
        if marker and first.startswith("a "):
            return f"a {second} {CONVERSE[relation]} {first}"
    return caption


class CanonicalCaptions(grain.transforms.Map):
    """A record transform (grain Map protocol) that trains on one caption per picture: the
    record's caption in canonical form, then `inner` (data.canonical_captions)."""

    def __init__(self, inner):
        self.inner = inner

    def map(self, element: dict) -> dict:
        caption = element["caption"]
        text = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        return self.inner.map({**element, "caption": canonical_caption(text).encode("utf-8")})

    def __repr__(self) -> str:
        return f"CanonicalCaptions({self.inner!r})"


def pair_class(color: str, shape: str) -> int:
    """The (colour, shape) class id of an object: its index in `PAIRS`."""
    return PAIRS.index((color, shape))


def _draw_pair(rng: np.random.Generator, pool: tuple) -> tuple[str, str]:
    return pool[int(rng.integers(len(pool)))]


def one_object_scene(rng: np.random.Generator, pair: tuple[str, str]) -> dict:
    """A one-object scene of the (colour, shape) `pair`: its objects and caption."""
    size = ("small", "large")[int(rng.integers(2))]
    row, col = int(rng.integers(3)), int(rng.integers(3))
    cx, cy = 8 + 8 * col + rng.uniform(-1, 1), 8 + 8 * row + rng.uniform(-1, 1)
    color, shape = pair
    obj = {"color": color, "shape": shape, "cx": cx, "cy": cy, "size": SIZES[size]}
    caption = f"a {size} {color} {shape} at {POSITIONS[(row, col)]}"
    return {"objects": [obj], "caption": caption, "size": size, "position": POSITIONS[(row, col)]}


def two_object_scene(rng: np.random.Generator, first: tuple, second: tuple) -> dict:
    """A two-object scene (`first` <relation> `second`, pairs of different colours)."""
    relation = tuple(RELATIONS)[int(rng.integers(len(RELATIONS)))]
    axis, sign = RELATIONS[relation]
    lo, hi = PAIR_CENTRE_RANGE
    along = rng.uniform(*PAIR_DISTANCE) * sign  # first − second along the axis
    across = rng.uniform(-PAIR_ACROSS, PAIR_ACROSS)  # first − second across it
    # The second's centre so that both centres stay inside [lo, hi]² on both axes.
    second_along = rng.uniform(max(lo, lo - along), min(hi, hi - along))
    second_across = rng.uniform(max(lo, lo - across), min(hi, hi - across))
    c2 = [second_along, second_across] if axis == 0 else [second_across, second_along]
    c1 = [c2[0] + (along if axis == 0 else across), c2[1] + (across if axis == 0 else along)]
    objects = [
        {"color": p[0], "shape": p[1], "cx": c[0], "cy": c[1], "size": PAIR_SIZE}
        for p, c in ((first, c1), (second, c2))
    ]
    caption = f"a {first[0]} {first[1]} {relation} a {second[0]} {second[1]}"
    return {"objects": objects, "caption": caption, "relation": relation}


def scene(rng: np.random.Generator, novel: bool) -> dict:
    """One scene: one object or two (even odds); `novel` scenes hold exactly one held-out pair."""
    if rng.integers(2) == 0:
        return one_object_scene(rng, _draw_pair(rng, NOVEL if novel else SEEN))
    first = _draw_pair(rng, NOVEL if novel else SEEN)
    second = _draw_pair(rng, tuple(p for p in SEEN if p[0] != first[0]))
    if novel and rng.integers(2):  # the held-out pair is the second object as often
        first, second = second, first
    return two_object_scene(rng, first, second)


def scene_record(found: dict) -> dict:
    """The record of a scene: the image, its caption and what the captions states, as ids."""
    objs = found["objects"]
    pad = [-1] * (2 - len(objs))
    return {
        "image": render(objs),
        "caption": found["caption"].encode("utf-8"),
        "label": np.int32(pair_class(objs[0]["color"], objs[0]["shape"])),  # the first object's
        "count": np.int32(len(objs)),
        "colors": np.asarray([list(COLORS).index(o["color"]) for o in objs] + pad, np.int32),
        "shapes": np.asarray([SHAPES.index(o["shape"]) for o in objs] + pad, np.int32),
        "size": np.int32(tuple(SIZES).index(found["size"]) if "size" in found else -1),
        "position": np.int32(
            tuple(POSITIONS.values()).index(found["position"]) if "position" in found else -1
        ),
        "relation": np.int32(
            tuple(RELATIONS).index(found["relation"]) if "relation" in found else -1
        ),
        "centers": np.asarray(
            [[o["cx"], o["cy"]] for o in objs] + [[-1.0, -1.0]] * len(pad), np.float32
        ),
    }


NAME = "shapes"
# Bump when the records change: the cache directory is keyed by it.
VERSION = "1.0.0"
SPLIT_SIZES = {"train": 20000, "test": 2000, "novel": 1000}
# Fixed seed of the per-scene RNG: part of the dataset definition, like VERSION.
_SEED = 20261202


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"unknown split '{split}' for dataset '{name}'; available: {', '.join(SPLITS)}"
        )


def example(split: str, index: int) -> dict:
    """Record `index` of a `shapes` split: {"image": uint8 [32, 32, 3], "caption": bytes, "label":
    the first object's (colour, shape) class, "count", "colors" and "shapes" (ids, -1 for no
    second object), "size", "position", "relation" (ids, -1 where the scene has none), "centers"
    f32 [2, 2] (x, y)}. A fixed function of (split, index)."""
    check_split(NAME, split)
    rng = np.random.default_rng([_SEED, SPLITS.index(split), index])
    return scene_record(scene(rng, novel=split == "novel"))


def generate_split(split: str) -> list[dict]:
    """All records of a `shapes` split in order."""
    check_split(NAME, split)
    return [example(split, i) for i in range(SPLIT_SIZES[split])]
