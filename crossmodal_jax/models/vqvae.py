"""Convolutional VQ-VAE over any number of spatial axes: encoder -> quantizer -> mirror decoder.

Inputs are channels-last: images [B, H, W, C], spectrograms as images [B, frames, mels, 1],
videos [B, T, H, W, C] (3-D convs). One resolution per `channel_mult` entry and one downsampling
between consecutive resolutions, with a per-level, per-axis stride (`strides`; default 2 on every
axis). The decoder mirrors it with nearest-neighbour upsampling by the same factors + conv (no
checkerboard artefacts of transposed convs). The quantizer is any entry of quantizers.py (EMA
VQ by default, whose codebook statistics live in the "vq_stats" collection: see vq.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.layers import SelfAttention, conv, group_norm
from crossmodal_jax.models.quantizers import (
    SPEC_KEYS,
    build_quantizer,
    codes_per_position,
    vocabulary_size,
)
from crossmodal_jax.training.sharding import BATCH, CONV_OUT, constrain

Strides = tuple[tuple[int, ...], ...]


def act_axes(ndim: int) -> tuple[str | None, ...]:
    """Activations at block boundaries: batch over the data axes, channels like conv outputs."""
    return (BATCH,) + (None,) * ndim + (CONV_OUT,)


def resolve_strides(
    channel_mult: Sequence[int], strides: Sequence[Sequence[int]], ndim: int
) -> Strides:
    """Per-level strides (one tuple of `ndim` ints per downsampling); () means 2 on every axis."""
    levels = len(channel_mult) - 1
    if not strides:
        return ((2,) * ndim,) * levels
    out = tuple(tuple(int(s) for s in level) for level in strides)
    if len(out) != levels:
        raise ValueError(
            f"strides has {len(out)} levels, expected len(channel_mult) - 1 = {levels}: {out}"
        )
    if any(len(level) != ndim or min(level) < 1 for level in out):
        raise ValueError(
            f"every strides entry needs {ndim} positive ints, one per spatial axis: {out}"
        )
    return out


def latent_shape(
    input_shape: Sequence[int],
    channel_mult: Sequence[int],
    strides: Sequence[Sequence[int]] = (),
) -> tuple[int, ...]:
    """Latent grid of an input with spatial size `input_shape` ((h, w), (frames, mels), (t, h, w)).

    Each axis must divide by the product of its strides over the levels.
    """
    size = tuple(int(n) for n in input_shape)
    per_level = resolve_strides(channel_mult, strides, len(size))
    factor = tuple(math.prod(level[a] for level in per_level) for a in range(len(size)))
    if any(n % f for n, f in zip(size, factor, strict=True)):
        raise ValueError(
            f"input size {'x'.join(map(str, size))} is not divisible by the VQ-VAE downsampling "
            f"factor {'x'.join(map(str, factor))} (channel_mult={tuple(channel_mult)}, "
            f"strides={per_level})"
        )
    return tuple(n // f for n, f in zip(size, factor, strict=True))


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3) x 2 + (1x1-projected) skip.

    Works on any number of spatial axes (read from the input rank).
    """

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
        nd, c_in = x_BxSxC.ndim - 2, x_BxSxC.shape[-1]
        h = group_norm(c_in, dtype=self.dtype, name="norm1")(x_BxSxC)
        h = conv(self.channels, 3, ndim=nd, dtype=self.dtype, name="conv1")(nn.silu(h))
        h = group_norm(self.channels, dtype=self.dtype, name="norm2")(h)
        h = conv(self.channels, 3, ndim=nd, dtype=self.dtype, name="conv2")(nn.silu(h))
        skip = x_BxSxC
        if c_in != self.channels:
            skip = conv(self.channels, 1, ndim=nd, dtype=self.dtype, name="skip")(x_BxSxC)
        return constrain(skip + h, act_axes(nd))


class AttnBlock(nn.Module):
    """VQGAN's self-attention at the lowest resolution: GroupNorm, one attention over every
    latent position (any number of spatial axes), residual. Lets a code see the whole input, which
    local convolutions cannot (a 32x32 scene's objects are far apart)."""

    num_heads: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
        shape, nd = x_BxSxC.shape, x_BxSxC.ndim - 2
        h = group_norm(shape[-1], dtype=self.dtype, name="norm")(x_BxSxC)
        h_BxLxC = SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(
            h.reshape(shape[0], -1, shape[-1])
        )
        return constrain(x_BxSxC + h_BxLxC.reshape(shape), act_axes(nd))


class Encoder(nn.Module):
    """[B, *spatial, C] -> z_e [B, *latent_grid, code_dim]; strides[l] after level l."""

    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    code_dim: int
    strides: Strides
    mid_attention: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
        nd = x_BxSxC.ndim - 2
        h = conv(
            self.channels * self.channel_mult[0], 3, ndim=nd, dtype=self.dtype, name="conv_in"
        )(x_BxSxC.astype(self.dtype))
        for level, mult in enumerate(self.channel_mult):
            width = self.channels * mult
            for i in range(self.num_res_blocks):
                h = ResBlock(width, dtype=self.dtype, name=f"down{level}_block{i}")(h)
            if level < len(self.channel_mult) - 1:
                h = conv(
                    width,
                    3,
                    strides=self.strides[level],
                    ndim=nd,
                    dtype=self.dtype,
                    name=f"down{level}_downsample",
                )(h)
                h = constrain(h, act_axes(nd))
        width = h.shape[-1]
        h = ResBlock(width, dtype=self.dtype, name="mid_block")(h)
        if self.mid_attention:
            h = AttnBlock(dtype=self.dtype, name="mid_attn")(h)
        h = nn.silu(group_norm(width, dtype=self.dtype, name="norm_out")(h))
        return conv(self.code_dim, 1, ndim=nd, dtype=self.dtype, name="conv_out")(h)


def upsample_nearest(x_BxSxC: jax.Array, factors: Sequence[int]) -> jax.Array:
    """Nearest-neighbour upsampling of the spatial axes by integer per-axis factors."""
    for axis, f in enumerate(factors, start=1):
        if f > 1:
            x_BxSxC = jnp.repeat(x_BxSxC, f, axis=axis)
    return x_BxSxC


def output_conv(
    out_channels: int, ndim: int, dtype: jnp.dtype = jnp.float32, name: str | None = None
) -> nn.Module:
    """The decoder's last layer; unbound, applied to the "conv_out" params and the sown
    `last_features` it recomputes the reconstruction (stages/adversarial.py)."""
    return conv(out_channels, 3, ndim=ndim, dtype=dtype, name=name)


class Decoder(nn.Module):
    """z_q [B, *latent_grid, D] -> [B, *spatial, out_channels]; mirrors Encoder's strides."""

    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int
    strides: Strides
    mid_attention: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxSxD: jax.Array) -> jax.Array:
        nd = z_BxSxD.ndim - 2
        width = self.channels * self.channel_mult[-1]
        h = conv(width, 3, ndim=nd, dtype=self.dtype, name="conv_in")(z_BxSxD.astype(self.dtype))
        h = ResBlock(width, dtype=self.dtype, name="mid_block")(h)
        if self.mid_attention:
            h = AttnBlock(dtype=self.dtype, name="mid_attn")(h)
        levels = len(self.channel_mult)
        for level in reversed(range(levels)):
            width = self.channels * self.channel_mult[level]
            for i in range(self.num_res_blocks):
                h = ResBlock(width, dtype=self.dtype, name=f"up{level}_block{i}")(h)
            if level > 0:
                h = upsample_nearest(h, self.strides[level - 1])
                h = conv(width, 3, ndim=nd, dtype=self.dtype, name=f"up{level}_upsample")(h)
                h = constrain(h, act_axes(nd))
        h = nn.silu(group_norm(h.shape[-1], dtype=self.dtype, name="norm_out")(h))
        # The last layer's input: VQGAN's adaptive weight needs gradients at conv_out's kernel
        # (stages/adversarial.py); kept only when "intermediates" is mutable.
        self.sow("intermediates", "last_features", h)
        out = output_conv(self.out_channels, nd, self.dtype, name="conv_out")(h)
        return out.astype(jnp.float32)


class VQVAE(nn.Module):
    """VQ-VAE tokenizer. Inputs f32[B, *spatial, C] (in [-1, 1]) <-> ids i32[B, *latent_grid]
    (i32[B, *latent_grid, N] with N residual stages: `code_depth`).

    `spatial_dims` spatial axes (2: images and spectrograms, 3: videos [B, T, H, W, C]);
    `strides` gives each downsampling level's stride per spatial axis, e.g. ((1, 2, 2), (2, 2, 2))
    for video (the first level keeps the frame rate, which keeps the full-resolution 3-D convs
    cheap) or ((2, 2), (1, 2)) for a spectrogram; () means 2 on every axis.
    Variables: "params" (encoder/decoder) and "vq_stats" (codebook EMA state). Training applies
    with mutable=["vq_stats"] and rngs={"vq": key} (used by dead-code restarts and data seeding).
    `quantizer_name` picks the quantizer ("vq" | "fsq" | "lfq" | "rvq"; quantizers.py); codebook
    options (cosine, lookup_dim, codebook_init, lookup_chunk_size, rotation_trick): see vq.py;
    levels: fsq.py; entropy_weight, diversity_gamma, inv_temperature: lfq.py; residual_*,
    quantizer_dropout: rvq.py.
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
    quantizer_name: str = "vq"  # config key tokenizer.model.quantizer
    rotation_trick: bool = False
    levels: tuple[int, ...] = ()
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    inv_temperature: float = 100.0
    residual_quantizer: str = "vq"
    residual_stages: int = 2
    quantizer_dropout: float = 0.0
    spatial_dims: int = 2
    strides: tuple[tuple[int, ...], ...] = ()
    mid_attention: bool = False  # VQGAN's self-attention block at the lowest resolution
    dtype: jnp.dtype = jnp.float32

    @property
    def quantizer_spec(self) -> dict[str, Any]:
        spec = {k: getattr(self, k) for k in SPEC_KEYS if k != "quantizer"}
        return {**spec, "quantizer": self.quantizer_name}

    @property
    def vocab_size(self) -> int:
        """Range of the code ids (the masked process's vocabulary without its mask id)."""
        return vocabulary_size(self.quantizer_spec)

    @property
    def code_depth(self) -> int:
        """Code ids a latent position has (residual stages; 1 otherwise)."""
        return codes_per_position(self.quantizer_spec)

    def setup(self):
        mult = tuple(self.channel_mult)
        self.level_strides = resolve_strides(mult, self.strides, self.spatial_dims)
        self.encoder = Encoder(
            self.channels,
            mult,
            self.num_res_blocks,
            self.code_dim,
            self.level_strides,
            mid_attention=self.mid_attention,
            dtype=self.dtype,
        )
        self.quantizer = build_quantizer(self.quantizer_spec, self.dtype)
        self.decoder = Decoder(
            self.channels,
            mult,
            self.num_res_blocks,
            self.in_channels,
            self.level_strides,
            mid_attention=self.mid_attention,
            dtype=self.dtype,
        )

    def _check_input(self, x: jax.Array) -> None:
        """Rank and divisibility errors in one line instead of a shape mismatch deep inside."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"VQ-VAE input of shape {x.shape} needs rank spatial_dims + 2 = "
                f"{self.spatial_dims + 2} ([B, *spatial, C])"
            )
        latent_shape(x.shape[1:-1], self.channel_mult, self.level_strides)

    def encode(self, x_BxSxC: jax.Array) -> jax.Array:
        """Continuous encoder output z_e [B, *latent_grid, code_dim]."""
        self._check_input(x_BxSxC)
        return self.encoder(x_BxSxC)

    def quantize(self, z: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """(straight-through quantized z, code ids [B, *latent_grid])."""
        z_q, aux = self.quantizer(z, train=train)
        return z_q, aux["indices"]

    def snap(self, z: jax.Array) -> jax.Array:
        """Generated latents [B, *latent_grid, code_dim] moved to the nearest code vectors."""
        return self.quantizer.snap(z)

    def tokenize(self, x_BxSxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(quantized latents z_q [B, *latent_grid, code_dim], code ids [B, *latent_grid]) of
        inputs: encode, then quantize (no codebook update)."""
        return self.quantize(self.encode(x_BxSxC))

    def decode(self, z_q_BxSxD: jax.Array) -> jax.Array:
        """Reconstruction f32[B, *spatial, C] from (quantized) latents."""
        return self.decoder(z_q_BxSxD)

    def decode_indices(self, indices_BxS: jax.Array) -> jax.Array:
        """Reconstruction f32[B, *spatial, C] from code ids [B, *latent_grid]."""
        return self.decoder(self.quantizer.lookup(indices_BxS))

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Code vectors [..., code_dim] for ids [...] (the continuous latents of stage 2)."""
        return self.quantizer.lookup(indices)

    def __call__(self, x_BxSxC: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        """(reconstruction f32[B, *spatial, C], quantizer aux: indices [B, *latent_grid], ...)."""
        z_e = self.encode(x_BxSxC)
        z_q, aux = self.quantizer(z_e, train=train)
        return self.decoder(z_q), aux


def vqvae_from_config(model_cfg: Mapping[str, Any], **fields: Any) -> VQVAE:
    """The VQ-VAE a `tokenizer.model` config block describes (plus fields such as in_channels,
    spatial_dims). The config's `quantizer` key is the module's `quantizer_name`: the name
    `quantizer` belongs to the submodule, whose variables checkpoints store under it."""
    m = dict(model_cfg)
    # Config lists (JSON round trips) as the hashable tuples the module's fields are; the defaults
    # of keys a block leaves out stay the module's.
    if "strides" in m:
        m["strides"] = tuple(tuple(s) for s in m["strides"])
    for key in ("levels", "channel_mult"):
        if key in m:
            m[key] = tuple(m[key])
    if "quantizer" in m:
        m["quantizer_name"] = m.pop("quantizer")
    return VQVAE(**m, **fields)
