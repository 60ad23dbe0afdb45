"""Convolutional VQ-VAE: encoder -> EMA vector quantizer -> mirror decoder (NHWC).

One resolution per `channel_mult` entry; `len(channel_mult) - 1` stride-2 downsamplings, mirrored
by nearest-neighbour upsampling + conv in the decoder (no checkerboard artefacts of transposed
convs). The codebook statistics live in the "vq_stats" collection (see vq.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.layers import conv, group_norm
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.sharding import BATCH, CONV_OUT

# Activations at block boundaries: batch over the data axes, channels like the conv outputs.
ACT_AXES = (BATCH, None, None, CONV_OUT)


def latent_shape(image_hw: tuple[int, int], channel_mult: tuple[int, ...]) -> tuple[int, int]:
    """Latent grid (h, w) of an image of size image_hw; sizes must divide by 2**(levels - 1)."""
    factor = 2 ** (len(channel_mult) - 1)
    h, w = image_hw
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the VQ-VAE downsampling factor {factor} "
            f"(channel_mult={tuple(channel_mult)})"
        )
    return h // factor, w // factor


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2 + (1x1-projected) skip."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        c_in = x_BxHxWxC.shape[-1]
        h = group_norm(c_in, dtype=self.dtype, name="norm1")(x_BxHxWxC)
        h = conv(self.channels, 3, dtype=self.dtype, name="conv1")(nn.silu(h))
        h = group_norm(self.channels, dtype=self.dtype, name="norm2")(h)
        h = conv(self.channels, 3, dtype=self.dtype, name="conv2")(nn.silu(h))
        skip = x_BxHxWxC
        if c_in != self.channels:
            skip = conv(self.channels, 1, dtype=self.dtype, name="skip")(x_BxHxWxC)
        return nn.with_logical_constraint(skip + h, ACT_AXES)


class Encoder(nn.Module):
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    code_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        h = conv(self.channels * self.channel_mult[0], 3, dtype=self.dtype, name="conv_in")(
            x_BxHxWxC.astype(self.dtype)
        )
        for level, mult in enumerate(self.channel_mult):
            width = self.channels * mult
            for i in range(self.num_res_blocks):
                h = ResBlock(width, dtype=self.dtype, name=f"down{level}_block{i}")(h)
            if level < len(self.channel_mult) - 1:
                h = conv(width, 3, strides=2, dtype=self.dtype, name=f"down{level}_downsample")(h)
                h = nn.with_logical_constraint(h, ACT_AXES)
        width = h.shape[-1]
        h = ResBlock(width, dtype=self.dtype, name="mid_block")(h)
        h = nn.silu(group_norm(width, dtype=self.dtype, name="norm_out")(h))
        return conv(self.code_dim, 1, dtype=self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxhxwxD: jax.Array) -> jax.Array:
        width = self.channels * self.channel_mult[-1]
        h = conv(width, 3, dtype=self.dtype, name="conv_in")(z_BxhxwxD.astype(self.dtype))
        h = ResBlock(width, dtype=self.dtype, name="mid_block")(h)
        levels = len(self.channel_mult)
        for level in reversed(range(levels)):
            width = self.channels * self.channel_mult[level]
            for i in range(self.num_res_blocks):
                h = ResBlock(width, dtype=self.dtype, name=f"up{level}_block{i}")(h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = conv(width, 3, dtype=self.dtype, name=f"up{level}_upsample")(h)
                h = nn.with_logical_constraint(h, ACT_AXES)
        h = nn.silu(group_norm(h.shape[-1], dtype=self.dtype, name="norm_out")(h))
        out = conv(self.out_channels, 3, dtype=self.dtype, name="conv_out")(h)
        return out.astype(jnp.float32)


class VQVAE(nn.Module):
    """VQ-VAE image tokenizer. Images f32[B, H, W, C] (in [-1, 1]) <-> ids i32[B, h, w].

    Variables: "params" (encoder/decoder) and "vq_stats" (codebook EMA state). Training applies
    with mutable=["vq_stats"] and rngs={"vq": key} (used by dead-code restarts and data seeding).
    Codebook options (cosine, lookup_dim, codebook_init, lookup_chunk_size): see vq.py.
    """

    in_channels: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    code_dim: int = 16
    num_codes: int = 256
    decay: float = 0.99
    epsilon: float = 1e-5
    commitment_cost: float = 0.25
    dead_code_threshold: float = 0.0
    cosine: bool = False
    lookup_dim: int = 0
    codebook_init: str = "random"
    lookup_chunk_size: int = 0
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        mult = tuple(self.channel_mult)
        self.encoder = Encoder(
            self.channels, mult, self.num_res_blocks, self.code_dim, dtype=self.dtype
        )
        self.quantizer = VectorQuantizer(
            num_codes=self.num_codes,
            code_dim=self.code_dim,
            decay=self.decay,
            epsilon=self.epsilon,
            commitment_cost=self.commitment_cost,
            dead_code_threshold=self.dead_code_threshold,
            cosine=self.cosine,
            lookup_dim=self.lookup_dim,
            codebook_init=self.codebook_init,
            lookup_chunk_size=self.lookup_chunk_size,
            dtype=self.dtype,
        )
        self.decoder = Decoder(
            self.channels, mult, self.num_res_blocks, self.in_channels, dtype=self.dtype
        )

    def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Continuous encoder output z_e [B, h, w, code_dim]."""
        return self.encoder(x_BxHxWxC)

    def quantize(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """(straight-through quantized z, code ids [B, h, w])."""
        z_q, aux = self.quantizer(z, train=train)
        return z_q, aux["indices"]

    def decode(self, z_q_BxhxwxD: jax.Array) -> jax.Array:
        """Image f32[B, H, W, C] from (quantized) latents."""
        return self.decoder(z_q_BxhxwxD)

    def decode_indices(self, indices_Bxhxw: jax.Array) -> jax.Array:
        """Image f32[B, H, W, C] from code ids."""
        return self.decoder(self.quantizer.lookup(indices_Bxhxw))

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Code vectors [..., code_dim] for ids [...] (the continuous latents of stage 2)."""
        return self.quantizer.lookup(indices)

    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        """(reconstruction f32[B, H, W, C], quantizer aux: indices, commitment_loss, ...)."""
        z_e = self.encoder(x_BxHxWxC)
        z_q, aux = self.quantizer(z_e, train=train)
        return self.decoder(z_q), aux
