"""augment.py: random translations of sources inside the step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.stages.augment import (
    affine_warp,
    code_shift,
    compose,
    random_affine,
    random_shift,
    source_affine,
    source_shift,
)


def _shifted(x_SxC: np.ndarray, offset, fill: float) -> np.ndarray:
    """x moved by `offset` (out[i] = x[i - offset]), uncovered positions = fill."""
    out = np.full_like(x_SxC, fill)
    src = tuple(
        slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, x_SxC.shape[:-1], strict=True)
    )
    dst = tuple(
        slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, x_SxC.shape[:-1], strict=True)
    )
    out[dst] = x_SxC[src]
    return out


@pytest.mark.parametrize(
    "shape, max_shift", [((16, 5, 6, 2), (1, 2)), ((8, 3, 4, 4, 1), (0, 1, 1))]
)
def test_every_example_is_its_input_translated_within_the_bounds(shape, max_shift):
    x = np.asarray(jax.random.normal(jax.random.key(0), shape))
    y = np.asarray(random_shift(jnp.asarray(x), jax.random.key(1), max_shift, fill=-1.0))
    offsets = [
        np.arange(-s, s + 1) for s in max_shift
    ]  # every candidate offset per axis; exactly one must reproduce y[b]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"), -1).reshape(-1, len(max_shift))
    seen = set()
    for b in range(shape[0]):
        matches = [tuple(o) for o in grid if np.array_equal(y[b], _shifted(x[b], o, -1.0))]
        assert len(matches) == 1, (b, matches)
        seen.add(matches[0])
    assert len(seen) > 1  # offsets differ between examples


def test_zero_shift_is_the_identity_and_no_augmentation():
    x = jnp.ones((2, 4, 4, 1))
    assert random_shift(x, jax.random.key(0), (0, 0), fill=-1.0) is x
    assert source_shift("image", ()) is None and source_shift("image", (0, 0)) is None


def test_same_key_same_shift_and_only_the_source_changes():
    batch = {"image": jax.random.normal(jax.random.key(0), (4, 6, 6, 1)), "text": jnp.arange(4)}
    augment = source_shift("image", (2, 2))
    a, b = augment(batch, jax.random.key(3)), augment(batch, jax.random.key(3))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["text"], batch["text"])
    assert not np.array_equal(augment(batch, jax.random.key(4))["image"], a["image"])


def test_wrong_number_of_axes_is_named():
    with pytest.raises(ValueError, match="max_shift has 3 entries but the source has 2"):
        random_shift(jnp.zeros((1, 4, 4, 1)), jax.random.key(0), (1, 1, 1), fill=0.0)


def _edge_shifted(x_S: np.ndarray, offset) -> np.ndarray:
    """x moved by `offset` (out[i] = x[clip(i - offset)]): uncovered positions repeat the edge."""
    index = np.meshgrid(
        *(np.clip(np.arange(n) - o, 0, n - 1) for o, n in zip(offset, x_S.shape, strict=True)),
        indexing="ij",
    )
    return x_S[tuple(index)]


def test_code_shift_translates_code_ids_and_repeats_the_edge_code():
    ids = np.asarray(jax.random.randint(jax.random.key(0), (16, 5, 4), 0, 256), np.int32)
    batch = {"source_codes": jnp.asarray(ids), "text": jnp.arange(16)}
    out = code_shift("source_codes", (2, 1))(batch, jax.random.key(1))
    got = np.asarray(out["source_codes"])
    assert got.dtype == np.int32 and got.shape == ids.shape
    np.testing.assert_array_equal(out["text"], batch["text"])
    offsets = [(a, b) for a in range(-2, 3) for b in range(-1, 2)]
    seen = set()
    for i in range(16):
        matches = [o for o in offsets if np.array_equal(got[i], _edge_shifted(ids[i], o))]
        assert matches, i  # some offset within the bounds reproduces it
        seen.add(matches[0])
    assert len(seen) > 1
    assert code_shift("source_codes", (0, 0)) is None


def test_affine_warp_rotates_and_scales_about_the_centre():
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 5, 5, 2)), np.float32)
    quarter = affine_warp(jnp.asarray(x), jnp.array([np.pi / 2]), jnp.array([1.0]), fill=-1.0)
    # A quarter turn counter-clockwise as displayed is numpy's rot90 of the (rows, cols) plane.
    np.testing.assert_allclose(quarter[0], np.rot90(x[0], 1, axes=(0, 1)), atol=1e-5)
    same = affine_warp(jnp.asarray(x), jnp.zeros(1), jnp.ones(1), fill=-1.0)
    np.testing.assert_allclose(same, x, atol=1e-6)
    # Scaling by 2: output pixel (0, 0) reads the input half-way to the centre, (1, 1).
    zoom = affine_warp(jnp.asarray(x), jnp.zeros(1), jnp.array([2.0]), fill=-1.0)
    np.testing.assert_allclose(zoom[0, 0, 0], x[0, 1, 1], atol=1e-5)
    np.testing.assert_allclose(zoom[0, 2, 2], x[0, 2, 2], atol=1e-6)  # the centre stays
    shrink = affine_warp(jnp.asarray(x), jnp.zeros(1), jnp.array([0.5]), fill=-1.0)
    np.testing.assert_allclose(shrink[0, 0, 0], -1.0)  # reads outside: the fill


def test_random_affine_warps_every_frame_of_a_clip_alike_and_composes():
    image = jax.random.normal(jax.random.key(0), (3, 6, 6, 1))
    clip = jnp.stack([image, image], axis=1)  # [B, T, H, W, C]
    warped = random_affine(clip, jax.random.key(1), 20.0, 0.2, fill=-1.0)
    np.testing.assert_allclose(warped[:, 0], warped[:, 1])
    np.testing.assert_allclose(
        warped[:, 0], random_affine(image, jax.random.key(1), 20.0, 0.2, -1.0)
    )
    assert not np.allclose(warped[:, 0], image)
    assert source_affine("video", 0.0, 0.0) is None
    shift = source_shift("image", (1, 1))
    assert compose(None, shift, None) is shift and compose(None, None) is None
    both = compose(shift, source_affine("image", 20.0, 0.2))
    batch = {"image": image}
    out = both(batch, jax.random.key(2))["image"]
    k1, k2 = jax.random.split(jax.random.key(2))
    expected = random_affine(shift(batch, k1)["image"], k2, 20.0, 0.2, -1.0)
    np.testing.assert_allclose(out, expected)


def test_code_shift_moves_every_residual_stage_of_a_position_together():
    ids = np.asarray(jax.random.randint(jax.random.key(2), (8, 5, 4, 3), 0, 16), np.int32)
    out = code_shift("source_codes", (2, 1))({"source_codes": jnp.asarray(ids)}, jax.random.key(3))
    got = np.asarray(out["source_codes"])
    assert got.shape == ids.shape
    for i in range(8):  # one offset per example, the same for its three stages
        per_stage = [
            {
                (a, b)
                for a in range(-2, 3)
                for b in range(-1, 2)
                if np.array_equal(got[i, ..., s], _edge_shifted(ids[i, ..., s], (a, b)))
            }
            for s in range(3)
        ]
        assert set.intersection(*per_stage), i
