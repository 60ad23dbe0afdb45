"""LPIPS perceptual distance (Zhang et al. 2018, "The unreasonable effectiveness of deep features
as a perceptual metric"), VGG16 variant, from a weights file the user provides.

Nothing is downloaded and nothing is unpickled: `load_lpips_params(path)` reads an .npz
(`np.load(allow_pickle=False)`) with torchvision's VGG16 trunk under its own names
(`features.<i>.weight` [out, in, 3, 3] and `.bias`) and the lpips package's linear heads
(`lin<k>.model.1.weight` [1, C, 1, 1]); docs/metrics.md shows the conversion.
`lpips_distance(params, x, y)` is a pure function of images in [-1, 1]: VGG16 features at five
depths, unit-normalised over channels, squared differences weighted per channel by the heads,
averaged over positions and summed over depths, as lpips.LPIPS(net="vgg") computes it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

# torchvision vgg16().features: the index of each 3x3 conv, its output channels, and whether a
# 2x2 max pool comes before it.
VGG16_CONVS = (
    (0, 64, False),
    (2, 64, False),
    (5, 128, True),
    (7, 128, False),
    (10, 256, True),
    (12, 256, False),
    (14, 256, False),
    (17, 512, True),
    (19, 512, False),
    (21, 512, False),
    (24, 512, True),
    (26, 512, False),
    (28, 512, False),
)
TAPS = (1, 3, 6, 9, 12)  # after these convs' ReLUs: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
MIN_SIZE = 16  # four 2x2 pools leave relu5_3 at least one position
# lpips' ScalingLayer: inputs in [-1, 1] to ImageNet-normalised ones.
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes, c_in = {}, 3
    for index, c_out, _ in VGG16_CONVS:
        shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{index}.bias"] = (c_out,)
        c_in = c_out
    for k, tap in enumerate(TAPS):
        shapes[f"lin{k}.model.1.weight"] = (1, VGG16_CONVS[tap][1], 1, 1)
    return shapes


def load_lpips_params(path: str | os.PathLike) -> dict:
    """{"conv": [(kernel HWIO, bias)] * 13, "lin": [weights [C]] * 5} (float32) from an .npz of
    torch-layout arrays. Every problem is a one-line ValueError naming the file and key."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"LPIPS weights {path!r}: not a readable .npz of arrays ({e})") from e
    for key, shape in _expected_shapes().items():
        if key not in arrays:
            raise ValueError(f"LPIPS weights {path!r}: no array {key!r} (expected shape {shape})")
        if arrays[key].shape != shape:
            raise ValueError(
                f"LPIPS weights {path!r}: {key!r} has shape {arrays[key].shape}, expected {shape}"
            )
    conv = [
        (
            jnp.asarray(arrays[f"features.{i}.weight"].transpose(2, 3, 1, 0), jnp.float32),
            jnp.asarray(arrays[f"features.{i}.bias"], jnp.float32),
        )
        for i, _, _ in VGG16_CONVS
    ]
    lin = [jnp.asarray(arrays[f"lin{k}.model.1.weight"].reshape(-1), jnp.float32) for k in range(5)]
    return {"conv": conv, "lin": lin}


def abstract_lpips_params(sharding: jax.sharding.Sharding | None = None) -> dict:
    """The tree `load_lpips_params` returns, as shapes only: what restoring a checkpoint that
    holds the frozen network needs, without its weights file."""

    def shape(a: tuple[int, ...]) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(a, jnp.float32, sharding=sharding)

    expected = _expected_shapes()
    conv = [
        (
            shape(tuple(np.array(expected[f"features.{i}.weight"])[[2, 3, 1, 0]])),
            shape(expected[f"features.{i}.bias"]),
        )
        for i, _, _ in VGG16_CONVS
    ]
    lin = [shape((expected[f"lin{k}.model.1.weight"][1],)) for k in range(len(TAPS))]
    return {"conv": conv, "lin": lin}


def _vgg_taps(conv: list, x_BxHxWx3: jax.Array) -> list[jax.Array]:
    h, taps = x_BxHxWx3, []
    for n, ((kernel, bias), (_, _, pool)) in enumerate(zip(conv, VGG16_CONVS, strict=True)):
        if pool:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.lax.conv_general_dilated(
            h,
            kernel,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        h = jax.nn.relu(h + bias)
        if n in TAPS:
            taps.append(h)
    return taps


def lpips_distance(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Perceptual distance f32[B] between images x, y [B, H, W, C] in [-1, 1] (C = 1 is read as
    gray RGB; H and W at least MIN_SIZE)."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"LPIPS compares two [B, H, W, 1 or 3] images, got {x.shape} and {y.shape}"
        )
    if min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(
            f"LPIPS (VGG16) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape}"
        )
    both = jnp.concatenate([x, y]).astype(jnp.float32)
    if both.shape[-1] == 1:
        both = jnp.repeat(both, 3, axis=-1)
    taps = _vgg_taps(params["conv"], (both - SHIFT) / SCALE)
    total = jnp.zeros((x.shape[0],), jnp.float32)
    for feats, weights in zip(taps, params["lin"], strict=True):
        unit = feats / (jnp.sqrt(jnp.sum(feats**2, axis=-1, keepdims=True)) + 1e-10)
        fx, fy = jnp.split(unit, 2)
        total = total + jnp.mean(jnp.sum((fx - fy) ** 2 * weights, axis=-1), axis=(1, 2))
    return total
