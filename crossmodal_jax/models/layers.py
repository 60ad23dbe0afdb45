"""Shared building blocks: annotated layers, attention, MLP, adaLN helpers, patchify.

Every parameter carries logical axis names (crossmodal_jax.training.sharding constants) so that one rules
table maps the whole model onto the mesh. Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models.attention import attend
from crossmodal_jax.models.products import float32_accumulating_dot
from crossmodal_jax.training.sharding import (
    BATCH,
    CONV_IN,
    CONV_OUT,
    EMBED,
    HEAD_DIM,
    HEADS,
    KV_SEQ,
    MLP,
    SEQ,
    VOCAB,
    constrain,
)

Initializer = Callable[..., jax.Array]
Axes = tuple[str | None, ...]

DEFAULT_KERNEL_INIT = nn.initializers.lecun_normal()
ZEROS = nn.initializers.zeros_init()


def partitioned(init: Initializer, axes: Axes) -> Initializer:
    """An initializer whose output is boxed with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: jnp.dtype = jnp.float32,
    kernel_init: Initializer = DEFAULT_KERNEL_INIT,
    use_bias: bool = True,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with kernel axes `axes` (in, out) and bias axis `axes[1]`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, axes),
        bias_init=partitioned(ZEROS, (axes[1],)),
        name=name,
        dot_general=float32_accumulating_dot,
    )


def _flat_partitioned(init: Initializer, shape: tuple[int, ...], axes: Axes) -> Initializer:
    """Initializer for DenseGeneral, which calls it with a flattened 2-D/1-D shape.

    flax reshapes a boxed result only after unboxing it, and under a mesh unboxing applies a
    sharding constraint with all logical names to the still-flat array (a rank error). So the
    value is reshaped to its real shape before boxing; the fan-in is still that of the flat shape.
    """

    def init_fn(key: jax.Array, flat_shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jnp.reshape(init(key, flat_shape, dtype), shape)

    return partitioned(init_fn, axes)


def dense_general(
    in_shape: tuple[int, ...],
    features: tuple[int, ...],
    kernel_axes: Axes,
    *,
    dtype: jnp.dtype = jnp.float32,
    kernel_init: Initializer = DEFAULT_KERNEL_INIT,
    name: str | None = None,
) -> nn.DenseGeneral:
    """nn.DenseGeneral contracting the trailing `in_shape` axes into `features` (multi-head).

    Kernel [*in_shape, *features] with axes `kernel_axes`; bias [*features] with the last
    len(features) of them.
    """
    bias_axes = kernel_axes[len(in_shape) :]
    return nn.DenseGeneral(
        features=features,
        axis=tuple(range(-len(in_shape), 0)),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_flat_partitioned(kernel_init, (*in_shape, *features), kernel_axes),
        bias_init=_flat_partitioned(ZEROS, features, bias_axes),
        name=name,
        dot_general=float32_accumulating_dot,
    )


def embed(
    num_embeddings: int,
    features: int,
    *,
    dtype: jnp.dtype = jnp.float32,
    name: str | None = None,
) -> nn.Embed:
    """nn.Embed with a (VOCAB, EMBED) table, std 0.02 (GPT/DiT convention)."""
    return nn.Embed(
        num_embeddings,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=partitioned(nn.initializers.normal(0.02), (VOCAB, EMBED)),
        name=name,
    )


class Conv(nn.Conv):
    """nn.Conv whose input is constrained to (BATCH, None, ..., None): channels replicated.

    Works around an XLA SPMD partitioner bug (jax 0.10.2, CPU, mesh data x fsdp x tensor): the
    backward pass of a 3x3 conv whose input channels are sharded over "tensor" while the kernel is
    (fsdp, tensor)-sharded returns wrong gradients (forward values are right). Gathering the
    input channels first keeps the tensor-parallel split of the output channels and is exact.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        spec = (BATCH,) + (None,) * (inputs.ndim - 1)
        return super().__call__(constrain(inputs, spec))


def _per_axis(value: int | tuple[int, ...], ndim: int, what: str) -> tuple[int, ...]:
    """An int repeated to `ndim` axes, or a tuple of exactly `ndim` ints."""
    if isinstance(value, int):
        return (value,) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"conv {what} {value} has {len(value)} entries, expected ndim={ndim}")
    return value


def _conv_nd(features, kernel, strides, *, dtype, kernel_init, name) -> Conv:
    ndim = len(kernel)
    return Conv(
        features,
        kernel,
        strides=strides,
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, (None,) * ndim + (CONV_IN, CONV_OUT)),
        bias_init=partitioned(ZEROS, (CONV_OUT,)),
        name=name,
    )


class FactorizedConv3D(nn.Module):
    """(2+1)-D conv over [B, T, H, W, C]: a kh x kw conv on every frame, then a kt conv over time
    (R(2+1)D, Tran et al. 2018).

    Why not a full kt x kh x kw kernel: XLA:CPU runs 3-D convolutions ~10x slower than the same
    work as 2-D + 1-D convs (measured: 0.83 s vs 0.08 s for one gradient on [16, 8, 32, 32, 16]),
    and the factorized block adds a nonlinearity-free but separately learned temporal filter at a
    third of the parameters. Parameters: "spatial" (kh, kw, C_in, F) and, when kt > 1 or the time
    stride is > 1, "temporal" (kt, F, F).
    """

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int]
    dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_KERNEL_INIT

    @nn.compact
    def __call__(self, x_BxTxHxWxC: jax.Array) -> jax.Array:
        kt, kh, kw = self.kernel_size
        st, sh, sw = self.strides
        b, t, h, w, c = x_BxTxHxWxC.shape
        kw_args = dict(dtype=self.dtype, kernel_init=self.kernel_init)
        y = _conv_nd(self.features, (kh, kw), (sh, sw), name="spatial", **kw_args)(
            x_BxTxHxWxC.reshape(b * t, h, w, c)
        )
        _, h2, w2, f = y.shape
        y_BxTxHxWxF = y.reshape(b, t, h2, w2, f)
        if kt == 1 and st == 1:
            return y_BxTxHxWxF
        # Time becomes the conv axis: [B * H * W, T, F].
        y = jnp.transpose(y_BxTxHxWxF, (0, 2, 3, 1, 4)).reshape(b * h2 * w2, t, f)
        y = _conv_nd(self.features, (kt,), (st,), name="temporal", **kw_args)(y)
        t2 = y.shape[1]
        return jnp.transpose(y.reshape(b, h2, w2, t2, f), (0, 3, 1, 2, 4))


def conv(
    features: int,
    kernel_size: int | tuple[int, ...] = 3,
    *,
    strides: int | tuple[int, ...] = 1,
    ndim: int = 2,
    dtype: jnp.dtype = jnp.float32,
    kernel_init: Initializer = DEFAULT_KERNEL_INIT,
    name: str | None = None,
) -> nn.Module:
    """N-D conv over `ndim` spatial axes (channels last), SAME padding.

    `kernel_size`/`strides`: an int (the same on every axis) or one int per spatial axis.
    Kernel axes (None,) * ndim + (CONV_IN, CONV_OUT); ndim=2 is the NHWC image conv. ndim=3
    (video [T, H, W]) is factorized into (2+1)-D, see FactorizedConv3D.
    """
    kernel = _per_axis(kernel_size, ndim, "kernel_size")
    stride = _per_axis(strides, ndim, "strides")
    if ndim == 3:
        return FactorizedConv3D(
            features, kernel, stride, dtype=dtype, kernel_init=kernel_init, name=name
        )
    return _conv_nd(features, kernel, stride, dtype=dtype, kernel_init=kernel_init, name=name)


def group_norm(channels: int, *, dtype: jnp.dtype = jnp.float32, name: str | None = None):
    """GroupNorm with a group count that divides `channels` and keeps >= 4 channels a group.

    The usual 32 groups would give 1-channel groups (instance norm) at the small widths (32-64)
    used for 8x8 digits, so the count shrinks with the width.
    """
    groups = next(
        g for g in (32, 16, 8, 4, 2, 1) if g == 1 or (channels % g == 0 and channels // g >= 4)
    )
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones_init(), (CONV_OUT,)),
        bias_init=partitioned(ZEROS, (CONV_OUT,)),
        name=name,
    )


def modulate(x_BxLxD: jax.Array, shift_BxD: jax.Array, scale_BxD: jax.Array) -> jax.Array:
    """adaLN modulation x * (1 + scale) + shift, broadcast over the sequence axis."""
    return x_BxLxD * (1 + scale_BxD[:, None, :]) + shift_BxD[:, None, :]


def timestep_embedding(
    t_B: jax.Array, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps, ADM/DiT layout [cos | sin].

    `t` is in timestep units (DiT uses 0..999): continuous-time callers should scale t in [0, 1]
    by ~1000 so that the low frequencies resolve it. Frequencies are
    max_period ** (-i / (dim/2 - freq_shift)): facebookresearch/DiT uses freq_shift 0, diffusers'
    DiT (Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)) uses 1.
    """
    half = dim // 2
    arange_H = jnp.arange(half, dtype=jnp.float32)
    freqs_H = jnp.exp(-math.log(max_period) * arange_H / (half - freq_shift))
    args_BxH = jnp.asarray(t_B, jnp.float32)[:, None] * freqs_H[None, :]
    emb_BxD = jnp.concatenate([jnp.cos(args_BxH), jnp.sin(args_BxH)], axis=-1)
    if dim % 2:
        emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
    return emb_BxD


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """1-D sin-cos embedding [len(pos), dim] (MAE/DiT), computed in numpy: a constant."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, col_first: bool = False) -> np.ndarray:
    """Fixed 2-D position embedding [grid_h * grid_w, dim], row-major like `patchify` tokens.

    First half of the features encodes the row, second half the column; `col_first=True` swaps
    them, the MAE/DiT layout (their meshgrid puts w first) used by PyTorch DiT checkpoints.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    halves = [sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)]
    emb = np.concatenate(halves[::-1] if col_first else halves, axis=1)
    return emb.astype(np.float32)


def patchify(x_BxHxWxC: jax.Array, patch_size: int) -> jax.Array:
    """Image -> tokens [B, (H/p)*(W/p), p*p*C], row-major over the patch grid."""
    p = patch_size
    return einops.rearrange(x_BxHxWxC, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)


def unpatchify(tokens_BxTxF: jax.Array, patch_size: int, grid_hw: tuple[int, int]) -> jax.Array:
    """Inverse of `patchify`: tokens [B, h*w, p*p*C] -> image [B, h*p, w*p, C]."""
    p = patch_size
    h, w = grid_hw
    return einops.rearrange(
        tokens_BxTxF, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c", h=h, w=w, p1=p, p2=p
    )


class Mlp(nn.Module):
    """Transformer MLP: Dense (EMBED, MLP) -> GELU (tanh) -> Dense (MLP, EMBED)."""

    hidden_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        d = x_BxLxD.shape[-1]
        h_BxLxF = dense(self.hidden_dim, (EMBED, MLP), dtype=self.dtype, name="fc1")(x_BxLxD)
        h_BxLxF = constrain(nn.gelu(h_BxLxF, approximate=True), (BATCH, SEQ, MLP))
        return dense(d, (MLP, EMBED), dtype=self.dtype, name="fc2")(h_BxLxF)


def gathered_keys(x_BxSxNxH: jax.Array) -> jax.Array:
    """Keys or values whole along the sequence (logical `kv_seq`, never sharded): with the
    tokens split over a `sequence` mesh axis, each device all-gathers them and attends with its
    own queries (sequence parallelism)."""
    return constrain(x_BxSxNxH, (BATCH, KV_SEQ, HEADS, HEAD_DIM))


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional key mask [B, L] of 0/1 (1 = attend).

    Every query must have at least one unmasked key; masked keys get exactly zero weight, so a
    masked token cannot influence any output.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"  # a key of attention.ATTENTION

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, key_mask_BxL: jax.Array | None = None) -> jax.Array:
        d = x_BxLxD.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"hidden size {d} is not divisible by num_heads {self.num_heads}")
        head_dim = d // self.num_heads
        qkv = [
            dense_general(
                (d,),
                (self.num_heads, head_dim),
                (EMBED, HEADS, HEAD_DIM),
                dtype=self.dtype,
                name=name,
            )(x_BxLxD)
            for name in ("query", "key", "value")
        ]
        q_BxLxNxH, k_BxLxNxH, v_BxLxNxH = (constrain(a, (BATCH, SEQ, HEADS, HEAD_DIM)) for a in qkv)
        k_BxLxNxH, v_BxLxNxH = (gathered_keys(a) for a in (k_BxLxNxH, v_BxLxNxH))
        mask = None
        if key_mask_BxL is not None:
            mask = (key_mask_BxL > 0)[:, None, None, :]  # [B, 1 (heads), 1 (queries), L]
        out_BxLxNxH = attend(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask, impl=self.attention)
        out_BxLxNxH = constrain(out_BxLxNxH, (BATCH, SEQ, HEADS, HEAD_DIM))
        return dense_general(
            (self.num_heads, head_dim), (d,), (HEADS, HEAD_DIM, EMBED), dtype=self.dtype, name="out"
        )(out_BxLxNxH)


class TimestepEmbedder(nn.Module):
    """Diffusion time -> vector: sinusoid (frequency_dim) -> Dense -> SiLU -> Dense (DiT)."""

    hidden_size: int
    frequency_dim: int = 256
    dtype: jnp.dtype = jnp.float32
    freq_shift: float = 0.0  # 1.0 for diffusers' DiT, see timestep_embedding

    @nn.compact
    def __call__(self, t_B: jax.Array) -> jax.Array:
        freq_BxF = timestep_embedding(t_B, self.frequency_dim, freq_shift=self.freq_shift)
        freq_BxF = freq_BxF.astype(self.dtype)
        kernel_init = nn.initializers.normal(0.02)
        # The frequency axis carries EMBED (-> fsdp) so that FSDP shards this kernel even on a
        # mesh with tensor=1; with (None, MLP) every device held all frequency_dim x D weights.
        h_BxD = dense(
            self.hidden_size, (EMBED, MLP), dtype=self.dtype, kernel_init=kernel_init, name="fc1"
        )(freq_BxF)
        return dense(
            self.hidden_size, (MLP, EMBED), dtype=self.dtype, kernel_init=kernel_init, name="fc2"
        )(nn.silu(h_BxD))
