"""Source augmentation inside the jitted step: random integer translations of images, clips and
spectrograms.

An X→text generator learns to read its source from a few thousand examples (1500 digits images),
so it memorises exact pixel layouts; a caption does not change when a digit sits a pixel higher,
or when an utterance starts a few frames later. Translating each training source by a random
offset teaches that invariance. It runs in the train step, keyed by the step's key, so it is
deterministic per step (resume stays exact), costs no host work, and works under any sharding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from crossmodal_jax.data.padded_audio import mask_key

Batch = dict[str, jax.Array]
Augment = Callable[[Batch, jax.Array], Batch]


def random_shift(
    x_BxSxC: jax.Array, key: jax.Array, max_shift: Sequence[int], fill: float | None
) -> jax.Array:
    """Translate each example of x [B, *spatial, C] by its own integer offset per spatial axis.

    Offsets are uniform in [-max_shift[i], max_shift[i]]; uncovered positions take `fill` (the
    background: -1 for our [-1, 1] pixels and log-mels), or repeat the edge when `fill` is None
    (code ids: the border's code is the background's). Axes with max_shift 0 are left alone.
    """
    spatial = x_BxSxC.shape[1:-1]
    if len(max_shift) != len(spatial):
        raise ValueError(
            f"max_shift has {len(max_shift)} entries but the source has {len(spatial)} "
            f"spatial axes (shape {tuple(x_BxSxC.shape)})"
        )
    shifts = tuple(int(s) for s in max_shift)
    if not any(shifts):
        return x_BxSxC
    pad = [(0, 0), *((s, s) for s in shifts), (0, 0)]
    if fill is None:
        padded = jnp.pad(x_BxSxC, pad, mode="edge")
    else:
        padded = jnp.pad(x_BxSxC, pad, constant_values=fill)
    # Start of the window in the padded array: s + offset, uniform in [0, 2s].
    starts_BxN = jax.random.randint(
        key, (x_BxSxC.shape[0], len(shifts)), 0, jnp.asarray([2 * s + 1 for s in shifts])
    )
    size = (*spatial, x_BxSxC.shape[-1])

    def window(x_SxC, start_N):
        return jax.lax.dynamic_slice(x_SxC, (*start_N, 0), size)

    return jax.vmap(window)(padded, starts_BxN)


def source_shift(source_key: str, max_shift: Sequence[int], fill: float = -1.0):
    """A batch augmentation fn(batch, key) -> batch translating `batch[source_key]`, or None when
    every max_shift is 0 (no augmentation: the step's random stream stays as without it)."""
    if not any(max_shift):
        return None

    def augment(batch: Batch, key: jax.Array) -> Batch:
        out = {**batch, source_key: random_shift(batch[source_key], key, max_shift, fill)}
        frames = batch.get(mask_key(source_key))
        if frames is not None:  # a padded source: its frame mask moves with it (0 uncovered)
            x = batch[source_key]
            spread = jnp.broadcast_to(frames.reshape(*frames.shape, *([1] * (x.ndim - 2))), x.shape)
            moved = random_shift(spread, key, max_shift, 0)  # the same offsets (same key)
            out[mask_key(source_key)] = jnp.max(moved, axis=tuple(range(2, x.ndim)))
        return out

    return augment


def affine_warp(
    x_BxSxC: jax.Array, angle_B: jax.Array, scale_B: jax.Array, fill: float
) -> jax.Array:
    """Rotate example b of x [B, ..., H, W, C] by angle_B[b] radians (counter-clockwise as
    displayed, rows downwards) and scale it by scale_B[b] about the centre of its last two spatial
    axes (bilinear; every frame of a clip alike); uncovered positions take `fill`."""
    h, w = x_BxSxC.shape[-3], x_BxSxC.shape[-2]
    dy, dx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

    def warp(x_SxC, angle, scale):
        # Output pixel p reads the input at centre + R(-angle) (p - centre) / scale.
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        rows = (cos * dy + sin * dx) / scale + (h - 1) / 2
        cols = (-sin * dy + cos * dx) / scale + (w - 1) / 2
        planes = jnp.moveaxis(x_SxC, -1, 0).reshape(-1, h, w)  # [C * frames, H, W]
        sample = lambda p: jax.scipy.ndimage.map_coordinates(  # noqa: E731
            p, [rows, cols], order=1, mode="constant", cval=fill
        )
        out = jax.vmap(sample)(planes).reshape(x_SxC.shape[-1], *x_SxC.shape[:-1])
        return jnp.moveaxis(out, 0, -1)

    return jax.vmap(warp)(x_BxSxC, angle_B, scale_B).astype(x_BxSxC.dtype)


def random_affine(
    x_BxSxC: jax.Array, key: jax.Array, max_degrees: float, max_scale: float, fill: float
) -> jax.Array:
    """`affine_warp` with each example's angle uniform in [-max_degrees, max_degrees] degrees and
    scale uniform in 1 + [-max_scale, max_scale]."""
    angle_key, scale_key = jax.random.split(key)
    b = x_BxSxC.shape[0]
    degrees_B = jax.random.uniform(angle_key, (b,), minval=-1.0, maxval=1.0) * max_degrees
    scale_B = 1.0 + jax.random.uniform(scale_key, (b,), minval=-1.0, maxval=1.0) * max_scale
    return affine_warp(x_BxSxC, jnp.deg2rad(degrees_B), scale_B, fill)


def source_affine(source_key: str, max_degrees: float, max_scale: float, fill: float = -1.0):
    """A batch augmentation fn(batch, key) -> batch rotating and scaling `batch[source_key]`
    (`random_affine`), or None when both bounds are 0."""
    if not (max_degrees or max_scale):
        return None

    def augment(batch: Batch, key: jax.Array) -> Batch:
        x = random_affine(batch[source_key], key, max_degrees, max_scale, fill)
        return {**batch, source_key: x}

    return augment


def compose(*augments: Augment | None) -> Augment | None:
    """One augmentation applying the given ones (None = none) in order, each with its own key."""
    active = [a for a in augments if a is not None]
    if len(active) <= 1:
        return active[0] if active else None

    def augment(batch: Batch, key: jax.Array) -> Batch:
        for a, k in zip(active, jax.random.split(key, len(active)), strict=True):
            batch = a(batch, k)
        return batch

    return augment


def code_shift(codes_key: str, max_shift: Sequence[int]):
    """Like `source_shift`, for a grid of precomputed code ids `batch[codes_key]` [B, *grid] (or
    [B, *grid, N] with N residual stages, moved together): offsets in codes, uncovered positions
    repeat the edge code. None when every max_shift is 0."""
    if not any(max_shift):
        return None

    def augment(batch: Batch, key: jax.Array) -> Batch:
        ids = batch[codes_key]
        one_id = ids.ndim == len(max_shift) + 1  # no stage axis: add one as the channels
        channels = ids[..., None] if one_id else ids
        masks = batch.get(mask_key(codes_key))
        if masks is not None:  # a padded source's code mask [B, *grid]: one more channel
            channels = jnp.concatenate([channels, masks[..., None].astype(ids.dtype)], axis=-1)
        shifted = random_shift(channels, key, max_shift, None)
        out = {**batch, codes_key: shifted[..., 0] if one_id else shifted[..., : ids.shape[-1]]}
        if masks is not None:
            out[mask_key(codes_key)] = shifted[..., -1].astype(masks.dtype)
        return out

    return augment
