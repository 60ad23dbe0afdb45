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


def captioned_pictures(
    modality: str, x: np.ndarray, captions: Sequence[str], references: Sequence[str]
) -> np.ndarray:
    """One row per input: its picture, then the generated caption, and below it the reference
    in grey (uint8 [H, W, 3]); a wrong caption is drawn in red."""
    from PIL import Image, ImageDraw

    pictures = MODALITIES[modality].to_pictures(x)
    upscale = max(1, MIN_SHOWN_SIDE // min(pictures.shape[1:3]))
    pictures = pictures.repeat(upscale, axis=1).repeat(upscale, axis=2)
    if pictures.shape[-1] == 1:
        pictures = np.repeat(pictures, 3, axis=-1)
    n, h, w, _ = pictures.shape
    text_w, row_h = 8 * max(len(t) for t in (*captions, *references)) + 16, max(h, 34) + 4
    canvas = Image.new("RGB", (w + text_w, n * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (picture, caption, ref) in enumerate(zip(pictures, captions, references, strict=True)):
        y = i * row_h + 2
        canvas.paste(Image.fromarray(picture), (0, y))
        color = (0, 0, 0) if caption == ref else (200, 0, 0)
        draw.text((w + 8, y + 2), caption, fill=color)
        draw.text((w + 8, y + 18), ref, fill=(128, 128, 128))
    return np.asarray(canvas)


def examples_table(
    inputs: Sequence[str], hypotheses: Sequence[str], references: Sequence[str], n: int = 8
) -> str:
    """A few generated texts beside their references (markdown), for TensorBoard and the log."""
    rows = ["| input | generated | reference |", "|---|---|---|"]
    for i, h, r in list(zip(inputs, hypotheses, references, strict=True))[:n]:
        rows.append(f"| {i} | {h} | {r} |")
    return "\n".join(rows)
