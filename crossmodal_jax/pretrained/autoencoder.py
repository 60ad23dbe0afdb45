"""The convolutional encoder and decoder shared by diffusers' AutoencoderKL / VQModel and the
taming-transformers (and latent-diffusion) VQGAN / KL autoencoders, and their settings read from
either library's checkpoint (autoencoder_names.py says where each parameter is stored).

Both libraries run the same network (the taming one was ported to diffusers): per resolution level
`layers` ResnetBlocks (GroupNorm eps 1e-6, SiLU, 3x3 conv, twice, plus a 1x1 shortcut when the
width changes), optionally a single-head self-attention after each, then a stride-2 3x3 conv after
an asymmetric (0, 1, 0, 1) pad (encoder) or nearest x2 and a 3x3 conv (decoder); a middle block
ResnetBlock-attention-ResnetBlock; GroupNorm, SiLU and a 3x3 conv out. Only the parameter names
differ, so one Flax module serves both.

Images are channels last ([B, H, W, C]); every parameter carries logical axis names (conv kernels
(None, None, CONV_IN, CONV_OUT)), so the loader shards it as it reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.models import layers
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.training.sharding import CONV_IN, CONV_OUT

EPS = 1e-6  # both libraries' GroupNorm epsilon


def _conv(
    features: int, kernel: int, *, strides: int = 1, padding: Any = None, name: str | None = None
) -> nn.Module:
    """A torch-style conv: symmetric k//2 padding unless `padding` is given (channels replicated on
    the input, see layers.Conv)."""
    pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
    return layers.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=pad,
        param_dtype=jnp.float32,
        kernel_init=layers.partitioned(layers.DEFAULT_KERNEL_INIT, (None, None, CONV_IN, CONV_OUT)),
        bias_init=layers.partitioned(layers.ZEROS, (CONV_OUT,)),
        name=name,
    )


def conv1x1(features: int, name: str | None = None) -> nn.Module:
    """A 1x1 conv (quant_conv, post_quant_conv)."""
    return _conv(features, 1, name=name)


def _norm(groups: int, name: str) -> nn.GroupNorm:
    # use_fast_variance=False: E[x^2] - E[x]^2 loses digits that torch's two-pass variance keeps.
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=EPS,
        use_fast_variance=False,
        param_dtype=jnp.float32,
        scale_init=layers.partitioned(nn.initializers.ones_init(), (CONV_OUT,)),
        bias_init=layers.partitioned(layers.ZEROS, (CONV_OUT,)),
        name=name,
    )


class ResnetBlock(nn.Module):
    """norm1-SiLU-conv1-norm2-SiLU-conv2 plus the input (through a 1x1 conv when widths differ)."""

    features: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.features, 3, name="conv1")(nn.silu(_norm(self.groups, "norm1")(x)))
        h = _conv(self.features, 3, name="conv2")(nn.silu(_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.features:
            x = _conv(self.features, 1, name="shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, with a residual (diffusers' Attention with
    `heads=1`, taming's AttnBlock).

    `conv_proj`: q/k/v/out are 1x1 convs (taming, kernel [1, 1, C, C]) rather than Dense
    (diffusers' Linear, kernel [C, C]); the same maths, chosen so that either checkpoint's tensor
    is a pure axis permutation of our parameter.
    """

    groups: int
    conv_proj: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape

        def proj(name: str) -> nn.Module:
            if self.conv_proj:
                return _conv(c, 1, name=name)
            return layers.dense(c, (CONV_IN, CONV_OUT), name=name)

        y = _norm(self.groups, "norm")(x)
        q, k, v = (proj(n)(y).reshape(b, h * w, c) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqc,bkc->bqk", q, k) * (c**-0.5)
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), v)
        return x + proj("proj_out")(out.reshape(b, h, w, c))


def _mid(x: jax.Array, groups: int, attention: bool, conv_proj: bool) -> jax.Array:
    c = x.shape[-1]
    x = ResnetBlock(c, groups, name="mid_res_0")(x)
    if attention:
        x = Attention(groups, conv_proj, name="mid_attn")(x)
    return ResnetBlock(c, groups, name="mid_res_1")(x)


class _Coder(nn.Module):
    """Fields of both halves: `channels[i]` the width of level i in the encoder's order (the
    decoder walks them reversed: its level `up_0` is the coarsest); `attention[i]` whether level i
    (in the half's own order) attends; `layers` ResnetBlocks a level (both libraries give the
    decoder one more than the encoder)."""

    channels: Sequence[int]
    layers: int
    attention: Sequence[bool]
    mid_attention: bool
    out_channels: int
    groups: int = 32
    conv_proj: bool = False


class Encoder(_Coder):
    """Images [B, H, W, in] -> [B, H / 2^(L-1), W / 2^(L-1), out_channels]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.channels[0], 3, name="conv_in")(x)
        for i, c in enumerate(self.channels):
            for j in range(self.layers):
                h = ResnetBlock(c, self.groups, name=f"down_{i}_res_{j}")(h)
                if self.attention[i]:
                    h = Attention(self.groups, self.conv_proj, name=f"down_{i}_attn_{j}")(h)
            if i < len(self.channels) - 1:
                # Pad right/bottom only: a stride-2 3x3 conv then sees the pixels torch's does.
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = _conv(c, 3, strides=2, padding="VALID", name=f"down_{i}_downsample")(h)
        h = _mid(h, self.groups, self.mid_attention, self.conv_proj)
        h = nn.silu(_norm(self.groups, "norm_out")(h))
        return _conv(self.out_channels, 3, name="conv_out")(h)


class Decoder(_Coder):
    """Latents [B, h, w, in] -> images [B, h 2^(L-1), w 2^(L-1), out_channels]."""

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = _conv(self.channels[-1], 3, name="conv_in")(z)
        h = _mid(h, self.groups, self.mid_attention, self.conv_proj)
        widths = list(reversed(self.channels))
        for i, c in enumerate(widths):
            for j in range(self.layers):
                h = ResnetBlock(c, self.groups, name=f"up_{i}_res_{j}")(h)
                if self.attention[i]:
                    h = Attention(self.groups, self.conv_proj, name=f"up_{i}_attn_{j}")(h)
            if i < len(widths) - 1:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2, exactly
                h = _conv(c, 3, name=f"up_{i}_upsample")(h)
        h = nn.silu(_norm(self.groups, "norm_out")(h))
        return _conv(self.out_channels, 3, name="conv_out")(h)


# --- where the parameters are stored -----------------------------------------------------------


# --- settings shared by the ports --------------------------------------------------------------

DOWN_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
UP_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


def diffusers_settings(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The encoder/decoder settings of a diffusers AutoencoderKL / VQModel config.json, refusing
    (in one line naming the key) what the shared modules do not implement."""

    def refuse(key: str, value: Any, known: Any) -> CheckpointError:
        return CheckpointError(f"{where}: {key}={value!r} is not supported (supported: {known})")

    act = config.get("act_fn", "silu")
    if act not in ("silu", "swish"):
        raise refuse("act_fn", act, "silu")
    channels = [int(c) for c in config.get("block_out_channels", (64,))]
    down_types = list(config.get("down_block_types", ("DownEncoderBlock2D",)))
    up_types = list(config.get("up_block_types", ("UpDecoderBlock2D",)))
    for key, types, known in (
        ("down_block_types", down_types, DOWN_BLOCKS),
        ("up_block_types", up_types, UP_BLOCKS),
    ):
        for t in types:
            if t not in known:
                raise refuse(key, t, ", ".join(known))
        if len(types) != len(channels):
            raise refuse(key, types, f"one per block_out_channels entry ({len(channels)})")
    groups = int(config.get("norm_num_groups", 32))
    if any(c % groups for c in channels):
        raise refuse("norm_num_groups", groups, f"a divisor of every width in {channels}")
    return {
        "in_channels": int(config.get("in_channels", 3)),
        "out_channels": int(config.get("out_channels", 3)),
        "block_out_channels": channels,
        "layers_per_block": int(config.get("layers_per_block", 1)),
        "down_attention": [DOWN_BLOCKS[t] for t in down_types],
        "up_attention": [UP_BLOCKS[t] for t in up_types],
        "mid_attention": bool(config.get("mid_block_add_attention", True)),
        "norm_num_groups": groups,
    }


def downsampling(s: dict[str, Any]) -> int:
    """How many pixels a side one latent covers: 2 for every level after the first."""
    return 2 ** (len(s["block_out_channels"]) - 1)


def init_args(s: dict[str, Any]) -> tuple:
    """The smallest image the module takes: one latent pixel (the module is size-agnostic)."""
    side = downsampling(s)
    return (jax.ShapeDtypeStruct((1, side, side, s["in_channels"]), jnp.float32),)


def build(s: dict[str, Any], half: str, out_channels: int) -> Encoder | Decoder:
    """The encoder (`half="down"`) or decoder (`"up"`) of a port's settings; the decoder has one
    ResnetBlock a level more, in both libraries."""
    return (Encoder if half == "down" else Decoder)(
        channels=tuple(s["block_out_channels"]),
        layers=s["layers_per_block"] + (half == "up"),
        attention=tuple(s[f"{half}_attention"]),
        mid_attention=s["mid_attention"],
        out_channels=out_channels,
        groups=s["norm_num_groups"],
        conv_proj=s["conv_attention"],
    )


def taming_settings(ckpt: Checkpoint) -> dict[str, Any]:
    """The encoder/decoder settings of a taming-transformers / latent-diffusion state dict, which
    has no config: read from the tensor names and shapes (the ddconfig's ch * ch_mult are the
    level widths, num_res_blocks the resnets a level, attn_resolutions the levels with `attn.*`).
    GroupNorm has taming's fixed 32 groups."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in ckpt:
            raise CheckpointError(f"{ckpt.path}: missing tensor {name!r} (taming VQGAN/KL layout)")
        return ckpt.shape(name)

    names = ckpt.names()
    levels = 1 + max(
        (int(n.split(".")[2]) for n in names if n.startswith("encoder.down.")), default=-1
    )
    if levels == 0:
        raise CheckpointError(f"{ckpt.path}: no 'encoder.down.*' tensors (taming VQGAN/KL layout)")
    channels = [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)]
    blocks = {n.split(".")[4] for n in names if n.startswith("encoder.down.0.block.")}
    if any(c % 32 for c in channels):
        raise CheckpointError(
            f"{ckpt.path}: level widths {channels} are not multiples of taming's 32 norm groups"
        )
    return {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "block_out_channels": channels,
        "layers_per_block": len(blocks),
        "down_attention": [f"encoder.down.{i}.attn.0.norm.weight" in ckpt for i in range(levels)],
        # taming numbers decoder levels finest first; ours run coarsest first.
        "up_attention": [
            f"decoder.up.{levels - 1 - i}.attn.0.norm.weight" in ckpt for i in range(levels)
        ],
        "mid_attention": "encoder.mid.attn_1.norm.weight" in ckpt,
        "norm_num_groups": 32,
        "encoder_out_channels": shape("encoder.conv_out.weight")[0],
        "decoder_in_channels": shape("decoder.conv_in.weight")[1],
    }
