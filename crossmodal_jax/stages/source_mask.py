"""A padded source's validity mask, from its frames to the tokenizer's codes to the DiT's tokens.

End-padded audio (data.audio.padding = "end", data/padded_audio.py) comes with ``"audio_mask"``
i32[B, frames]. Three things must ignore the padded frames, and they read the mask through here:

- the tokenizer's reconstruction loss (stages/objectives.py ``vqvae_objective``): the mean squared
  error over the frames that hold sound, so a short clip's few frames weigh as much per frame as a
  long one's, and the padding (trivially reconstructed silence) does not dilute the loss;
- the codes: a code covers ``stride = frames / grid[0]`` frames of the time axis, and it holds sound
  when any of them does (``code_mask``); precomputed code ids store this code mask beside them
  (``tokenizer_codes_mask``), and the code-shift augmentation moves it with them (augment.py);
- the X→text DiT: a condition token (``patch`` codes, condition_stem.group_codes) is attended to
  when any of its codes holds sound (``token_mask``); padded tokens are masked as keys and left out
  of the pooled adaLN vector (models/dit.ConditionEmbedder), so nothing there reaches a caption.

Before the frozen tokenizer encodes a padded source, its padded frames are set to the silence
value the features give them (``canonical``): the encoder's convolutions read past the last frame
that holds sound, and this makes what they read there the same for every clip, whatever values a
batch carries in its padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crossmodal_jax.data.padded_audio import PAD_VALUE, mask_key
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.condition_stem import group_codes


def downsample_mask(mask_BxN: jax.Array, size: int) -> jax.Array:
    """[B, N] -> [B, size]: position j covers positions [j * N / size, (j + 1) * N / size) and is 1
    when any of them is (a code holds sound when any of its frames does)."""
    b, n = mask_BxN.shape
    if size < 1 or n % size:
        raise ValueError(f"a mask of {n} positions cannot be downsampled to {size}")
    return jnp.max(jnp.asarray(mask_BxN).reshape(b, size, n // size), axis=-1)


def code_mask(frame_mask_BxF: jax.Array, grid: tuple[int, ...]) -> jax.Array:
    """A frame mask [B, frames] -> the code grid's mask [B, *grid]: the time axis (the first)
    downsampled by the tokenizer's stride, the same on every other axis (mel codes)."""
    time_BxT = downsample_mask(frame_mask_BxF, grid[0])
    shape = (time_BxT.shape[0], *grid)
    return jnp.broadcast_to(time_BxT.reshape(*time_BxT.shape, *([1] * (len(grid) - 1))), shape)


def token_mask(code_mask_BxG: jax.Array, patch: tuple[int, ...]) -> jax.Array:
    """The code grid's mask [B, *grid] -> one entry per condition token [B, tokens], grouped as
    group_codes groups the codes (() = a code a token): 1 when any code of the token is."""
    grouped = group_codes(jnp.asarray(code_mask_BxG)[..., None], tuple(patch))
    return jnp.max(grouped, axis=-1).astype(jnp.int32)


def canonical(batch: dict, key: str) -> dict:
    """The batch with batch[key]'s padded frames at PAD_VALUE (unchanged without a mask)."""
    if mask_key(key) not in batch:
        return batch
    x = batch[key]
    keep = jnp.asarray(batch[mask_key(key)]).astype(bool)
    keep = keep.reshape(*keep.shape, *([1] * (x.ndim - keep.ndim)))
    return {**batch, key: jnp.where(keep, x, jnp.asarray(PAD_VALUE, x.dtype))}


def condition_mask(
    batch: dict, key: str, grid: tuple[int, ...], patch: tuple[int, ...], *, codes_key: str
) -> jax.Array | None:
    """The condition tokens' mask [B, tokens] of a batch's source, or None when it has no mask:
    from the precomputed codes' mask (batch[mask_key(codes_key)]) when the batch holds codes,
    else from the source's frame mask."""
    if codes_key in batch:
        masks = batch.get(mask_key(codes_key))
        return None if masks is None else token_mask(masks, patch)
    if mask_key(key) not in batch:
        return None
    return token_mask(code_mask(batch[mask_key(key)], grid), patch)


def host_canonical(x: np.ndarray, frame_mask_BxF: np.ndarray | None) -> np.ndarray:
    """``canonical`` in NumPy for a source array and its frame mask (None: x unchanged)."""
    if frame_mask_BxF is None:
        return x
    keep = np.asarray(frame_mask_BxF).astype(bool)
    keep = keep.reshape(*keep.shape, *([1] * (np.ndim(x) - keep.ndim)))
    return np.where(keep, x, np.asarray(PAD_VALUE, np.asarray(x).dtype))


def host_code_mask(frame_mask_BxF: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """``code_mask`` in NumPy, for code ids precomputed on the host: i32[B, *grid]."""
    return np.asarray(code_mask(jnp.asarray(frame_mask_BxF), grid), np.int32)


def masked_mean_squares(x: jax.Array, x_rec: jax.Array, frame_mask_BxF: jax.Array) -> jax.Array:
    """Per-example mean squared error f32[B] over the frames that hold sound (every feature of
    them), the reconstruction error of a padded source."""
    b = x.shape[0]
    sq_BxFxR = jnp.square(x_rec - x).reshape(b, x.shape[1], -1)
    keep_BxF = jnp.asarray(frame_mask_BxF, jnp.float32)
    total = jnp.sum(jnp.sum(sq_BxFxR, axis=-1) * keep_BxF, axis=-1)
    count = jnp.maximum(jnp.sum(keep_BxF, axis=-1), 1.0) * sq_BxFxR.shape[-1]
    return total / count


def check_padded_source(config: ml_collections.ConfigDict) -> None:
    """What cannot keep a padded source's padding out (one line each): parts that read the whole
    source as one picture."""
    data = config.data
    if "audio" not in data or data.audio.padding != "end":
        return
    why = "reads the padding of end-padded clips (data.audio.padding='end')"
    gen = config.generator
    if gen.model.cond_conv:
        raise UserError(f"generator.model.cond_conv: the conv stem over the whole code grid {why}")
    if any(gen.source_affine):
        raise UserError(f"generator.source_affine: rotating the spectrogram {why}")
    if "tokenizer" in config and config.tokenizer.adversarial.weight > 0:
        raise UserError(f"tokenizer.adversarial.weight: the discriminator {why}")
