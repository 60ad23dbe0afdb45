"""The embedded ``moving_digits`` dataset (DESIGN §4 contract): one digit sliding across a canvas.

Each video has 8 frames of 32x32 grayscale. The sprite is a ``digits`` image upscaled 2x (nearest)
to 16x16, its ink 0..16 scaled to 0..255. It moves in a straight line ``up``, ``down``, ``left`` or
``right`` at 1 or 2 px a frame from a random start chosen so the whole sprite stays on the canvas in
all 8 frames. Caption: exactly ``the digit <word> moves <direction>``.

Every source image appears once per direction, so directions are balanced and the split sizes are
4 x the ``digits`` splits: train 6000 (digits 0..1499), test 1188 (digits 1500..1796 only, never
trained on). Speed and start are drawn from an RNG seeded by (seed, digit index, direction), so
each video is a fixed function of its index. Rendering is one vectorised scatter (well under 1 s).
"""

import numpy as np

from crossmodal_jax.data import digits

NAME = "moving_digits"
# Bump when the records change: the cache directory is keyed by it.
VERSION = "1.0.0"
SPLITS = ("train", "test")
NUM_FRAMES = 8
CANVAS = 32
SPRITE = 16  # 8x8 digit upscaled 2x
IMAGE_MAX_VALUE = 255
SPEEDS = (1, 2)  # px per frame
# Index = the record's "direction" field; (d_row, d_col) per frame for speed 1.
DIRECTIONS = ("up", "down", "left", "right")
_STEP = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}
# Fixed seed of the per-video RNG: part of the dataset definition, like VERSION.
_MOTION_SEED = 20240602


def caption(label: int, direction: int) -> str:
    """The contract caption of a video of digit ``label`` moving ``DIRECTIONS[direction]``."""
    return f"the digit {digits.NUMBER_WORDS[label]} moves {DIRECTIONS[direction]}"


def sprites(images_Nx8x8x1: np.ndarray) -> np.ndarray:
    """``digits`` images (ink 0..16) -> uint8 [N,16,16] sprites, 2x nearest, ink scaled to 0..255."""
    ink = np.asarray(images_Nx8x8x1, dtype=np.float64)[..., 0]
    scaled = np.rint(ink * (IMAGE_MAX_VALUE / digits.IMAGE_MAX_VALUE)).astype(np.uint8)
    return scaled.repeat(2, axis=1).repeat(2, axis=2)


def motion_plan(split: str) -> dict[str, np.ndarray]:
    """What each video of ``split`` shows, in record order (record ``j`` = image ``j // 4``,
    direction ``j % 4``).

    Returns int32 arrays of length N: ``digit_index`` (into ``load_digits``), ``direction``,
    ``speed`` (px/frame), ``row0``/``col0`` (top-left of the sprite in frame 0).
    """
    indices = np.asarray(digits.split_indices(split), dtype=np.int32)
    n_dir = len(DIRECTIONS)
    digit_index = np.repeat(indices, n_dir)
    direction = np.tile(np.arange(n_dir, dtype=np.int32), len(indices))
    speed = np.empty_like(digit_index)
    row0 = np.empty_like(digit_index)
    col0 = np.empty_like(digit_index)
    last = CANVAS - SPRITE  # largest top-left coordinate that keeps the sprite on the canvas
    for j, (i, d) in enumerate(zip(digit_index.tolist(), direction.tolist(), strict=True)):
        rng = np.random.default_rng([_MOTION_SEED, i, d])
        s = int(SPEEDS[int(rng.integers(len(SPEEDS)))])
        travel = s * (NUM_FRAMES - 1)
        # The moving coordinate must have room for the whole travel; the other one is free.
        lo_r, hi_r, lo_c, hi_c = 0, last, 0, last
        dr, dc = _STEP[d]
        if dr < 0:
            lo_r = travel
        elif dr > 0:
            hi_r = last - travel
        if dc < 0:
            lo_c = travel
        elif dc > 0:
            hi_c = last - travel
        speed[j] = s
        row0[j] = rng.integers(lo_r, hi_r + 1)
        col0[j] = rng.integers(lo_c, hi_c + 1)
    return {
        "digit_index": digit_index,
        "direction": direction,
        "speed": speed,
        "row0": row0,
        "col0": col0,
    }


def positions(plan: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Top-left (row, col) of the sprite in every frame: two int32 [N, NUM_FRAMES] arrays."""
    steps = np.asarray([_STEP[d] for d in range(len(DIRECTIONS))], dtype=np.int32)
    t_T = np.arange(NUM_FRAMES, dtype=np.int32)
    delta_N = steps[plan["direction"]] * plan["speed"][:, None]  # [N, 2]
    rows_NxT = plan["row0"][:, None] + delta_N[:, :1] * t_T
    cols_NxT = plan["col0"][:, None] + delta_N[:, 1:] * t_T
    return rows_NxT, cols_NxT


def render(sprites_Nx16x16: np.ndarray, plan: dict[str, np.ndarray]) -> np.ndarray:
    """Videos uint8 [N, NUM_FRAMES, 32, 32, 1]: each sprite pasted at its per-frame position."""
    rows_NxT, cols_NxT = positions(plan)
    if rows_NxT.min() < 0 or rows_NxT.max() > CANVAS - SPRITE:
        raise AssertionError("motion plan leaves the canvas")  # a bug in motion_plan, not user data
    if cols_NxT.min() < 0 or cols_NxT.max() > CANVAS - SPRITE:
        raise AssertionError("motion plan leaves the canvas")
    n = len(rows_NxT)
    video_NxTxHxW = np.zeros((n, NUM_FRAMES, CANVAS, CANVAS), dtype=np.uint8)
    offs = np.arange(SPRITE)
    # One advanced-index scatter: [N,T,16,16] target pixels <- the sprite broadcast over time.
    r_idx = rows_NxT[:, :, None, None] + offs[:, None]
    c_idx = cols_NxT[:, :, None, None] + offs[None, :]
    n_idx = np.arange(n)[:, None, None, None]
    t_idx = np.arange(NUM_FRAMES)[None, :, None, None]
    video_NxTxHxW[n_idx, t_idx, r_idx, c_idx] = sprites_Nx16x16[:, None]
    return video_NxTxHxW[..., None]


def generate_split(split: str) -> list[dict]:
    """All records of ``split`` in order.

    Record: ``{"video": uint8 [8,32,32,1] 0..255, "label": int32, "direction": int32 (0 up, 1 down,
    2 left, 3 right), "caption": bytes (utf-8)}``.
    """
    plan = motion_plan(split)
    images, labels = digits._load_raw()
    videos = render(sprites(images[plan["digit_index"]]), plan)
    records = []
    for j in range(len(videos)):
        label = int(labels[plan["digit_index"][j]])
        direction = int(plan["direction"][j])
        records.append(
            {
                "video": videos[j],
                "label": np.int32(label),
                "direction": np.int32(direction),
                "caption": caption(label, direction).encode("utf-8"),
            }
        )
    return records
