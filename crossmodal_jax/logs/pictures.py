"""What people look at: image grids and PNGs of model inputs and samples, and tables of
generated texts beside their references (markdown, for TensorBoard and the log)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crossmodal_jax.data.modalities import MODALITIES

MIN_SHOWN_SIDE = 64  # grids are nearest-upscaled until a picture's short side is this big


def image_grid(
    images_NxHxWxC: np.ndarray, cols: int, *, upscale: int = 1, pad: int = 1
) -> np.ndarray:
    """Tile uint8 images into one grid (nearest-neighbour upscaled, so 8x8 digits are visible)."""
    images = np.asarray(images_NxHxWxC)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 64, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(path: str, image_HxWxC: np.ndarray) -> None:
    from PIL import Image

    img = np.asarray(image_HxWxC)
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def picture_grid(modality: str, x: np.ndarray, cols: int) -> np.ndarray:
    """Model inputs in [-1, 1] of a modality (images, spectrograms, videos) as one uint8 grid."""
    pictures = MODALITIES[modality].to_pictures(x)
    upscale = max(1, MIN_SHOWN_SIDE // min(pictures.shape[1:3]))
    return image_grid(pictures, cols=cols, upscale=upscale)


def examples_table(
    inputs: Sequence[str], hypotheses: Sequence[str], references: Sequence[str], n: int = 8
) -> str:
    """A few generated texts beside their references (markdown), for TensorBoard and the log."""
    rows = ["| input | generated | reference |", "|---|---|---|"]
    for i, h, r in list(zip(inputs, hypotheses, references, strict=True))[:n]:
        rows.append(f"| {i} | {h} | {r} |")
    return "\n".join(rows)
