"""PixArt-α / PixArt-Σ's transformer (diffusers `PixArtTransformer2DModel`) as a Flax module.

The maths is diffusers' (models/transformers/pixart_transformer_2d.py, BasicTransformerBlock with
norm_type "ada_norm_single"), channels last, built from our layers where they compute the same
thing: `layers.conv` (the stride-p patch conv), `layers.TimestepEmbedder` (diffusers' `Timesteps(256,
flip_sin_to_cos=True, downscale_freq_shift=0)` + `TimestepEmbedding` is its [cos | sin] sinusoid,
freq_shift 0, and Dense-SiLU-Dense), `layers.Mlp` (FeedForward "gelu-approximate", 4x),
`layers.sincos_1d`, `layers.modulate`, `layers.unpatchify` (diffusers' "nhwpqc" unpatchify has the
same (p, q, c) feature order) and `attention.attend`.

What differs from our DiT/CrossAttentionBlock, and why PixArt has its own block:
- adaLN-single: one Dense (`t_block`) maps the timestep embedding to six D-vectors shared by all
  blocks; each block adds its own learned `scale_shift_table` [6, D] to them;
- the cross-attention reads the raw residual stream (no norm) and is not gated;
- q, k, v and out are plain Dense kernels [in, out] (heads are split in the activations), so each
  is the checkpoint's Linear weight transposed: a pure permutation, read slice by slice on a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models.attention import attend
from crossmodal_jax.models.conditioning import HEAD_AXES, TOKEN_AXES, adaln_norm
from crossmodal_jax.models.layers import (
    Mlp,
    TimestepEmbedder,
    conv,
    dense,
    gathered_keys,
    modulate,
    partitioned,
    sincos_1d,
    unpatchify,
)
from crossmodal_jax.training.sharding import EMBED, HEADS, MLP, constrain

FREQUENCY_DIM = 256  # diffusers' Timesteps(num_channels=256) for t, resolution and aspect ratio


def pos_embed(
    dim: int, grid_h: int, grid_w: int, base_size: int, interpolation_scale: float
) -> np.ndarray:
    """diffusers' `get_2d_sincos_pos_embed` for a grid_h x grid_w patch grid, [h * w, dim].

    Positions are scaled so that the grid spans `base_size / interpolation_scale` units whatever
    its size (PixArt's resolution-independent positions): row i is at i / (grid_h / base_size) /
    interpolation_scale, computed in float32 as diffusers does. The column fills the first half of
    the features (its meshgrid puts w first), tokens are row-major like `patchify`'s.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")

    def axis(n: int) -> np.ndarray:
        pos = np.arange(n, dtype=np.float32) / np.float32(n / base_size)
        return pos / np.float32(interpolation_scale)

    rows, cols = np.meshgrid(axis(grid_h), axis(grid_w), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


class Attention(nn.Module):
    """diffusers `Attention` (to_q, to_k, to_v, to_out.0): queries from x, keys and values from
    `context` (x itself for self-attention), optional key mask [B, S] (1 = attend)."""

    num_heads: int
    head_dim: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"  # a key of attention.ATTENTION

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, context_BxSxE: jax.Array, key_mask_BxS: jax.Array | None = None
    ) -> jax.Array:
        n, h, dt = self.num_heads, self.head_dim, self.dtype

        def heads(inputs: jax.Array, name: str) -> jax.Array:
            proj = dense(n * h, (EMBED, HEADS), dtype=dt, use_bias=self.use_bias, name=name)
            out = proj(inputs)
            return constrain(out.reshape(*out.shape[:2], n, h), HEAD_AXES)

        q = heads(x_BxTxD, "to_q")
        k, v = (gathered_keys(heads(context_BxSxE, name)) for name in ("to_k", "to_v"))
        mask = None
        if key_mask_BxS is not None:
            mask = (key_mask_BxS > 0)[:, None, None, :]  # [B, 1 (heads), 1 (queries), S]
        out = constrain(attend(q, k, v, mask, impl=self.attention), HEAD_AXES)
        out = out.reshape(*out.shape[:2], n * h)
        return dense(x_BxTxD.shape[-1], (HEADS, EMBED), dtype=dt, name="to_out")(out)


class PixArtBlock(nn.Module):
    """BasicTransformerBlock, norm_type "ada_norm_single": modulated self-attention, ungated
    cross-attention to the caption, modulated feed-forward."""

    num_heads: int
    head_dim: int
    norm_eps: float = 1e-6
    attention_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, t_Bx6D: jax.Array, cond_BxLxE: jax.Array, cond_mask_BxL: jax.Array
    ) -> jax.Array:
        d, dt = x_BxTxD.shape[-1], self.dtype
        table = self.param(
            "scale_shift_table", partitioned(nn.initializers.normal(d**-0.5), (None, EMBED)), (6, d)
        )
        mod_Bx6xD = table[None] + t_Bx6D.reshape(-1, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            mod_Bx6xD[:, i] for i in range(6)
        )
        attn_args = dict(use_bias=self.attention_bias, dtype=dt, attention=self.attention)

        h = modulate(adaln_norm(dt, "norm1", self.norm_eps)(x_BxTxD), shift_msa, scale_msa)
        h = Attention(self.num_heads, self.head_dim, name="attn1", **attn_args)(h, h)
        x_BxTxD = constrain(x_BxTxD + gate_msa[:, None, :] * h, TOKEN_AXES)

        cross = Attention(self.num_heads, self.head_dim, name="attn2", **attn_args)
        x_BxTxD = constrain(x_BxTxD + cross(x_BxTxD, cond_BxLxE, cond_mask_BxL), TOKEN_AXES)

        h = modulate(adaln_norm(dt, "norm2", self.norm_eps)(x_BxTxD), shift_mlp, scale_mlp)
        h = Mlp(4 * d, dtype=dt, name="ff")(h)
        return constrain(x_BxTxD + gate_mlp[:, None, :] * h, TOKEN_AXES)


class PixArtTransformer(nn.Module):
    """`__call__(x [B, H, W, C], timestep [B], encoder_hidden_states [B, L, E],
    encoder_attention_mask [B, L] or None, resolution [B, 2], aspect_ratio [B, 1])` ->
    [B, H, W, out_channels], the diffusers output channels last.

    `resolution` (pixel height, width) and `aspect_ratio` (height / width) are read only with
    `use_additional_conditions` (PixArt-α 1024px), and are then required, as in diffusers.
    `caption_channels` None: the captions are the cross-attention's inputs as they are.
    """

    num_heads: int
    head_dim: int
    in_channels: int
    out_channels: int
    num_layers: int
    patch_size: int
    base_size: int  # sample_size // patch_size: the grid the positions are scaled to
    interpolation_scale: float
    caption_channels: int | None
    norm_eps: float = 1e-6
    attention_bias: bool = True
    use_additional_conditions: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self,
        x_BxHxWxC: jax.Array,
        timestep_B: jax.Array,
        encoder_hidden_states_BxLxE: jax.Array,
        encoder_attention_mask_BxL: jax.Array | None = None,
        resolution_Bx2: jax.Array | None = None,
        aspect_ratio_Bx1: jax.Array | None = None,
    ) -> jax.Array:
        d, p, dt = self.num_heads * self.head_dim, self.patch_size, self.dtype
        b, height, width, _ = x_BxHxWxC.shape
        grid = (height // p, width // p)
        x = conv(d, p, strides=p, dtype=dt, name="patch_embed")(x_BxHxWxC.astype(dt))
        pos = pos_embed(d, *grid, self.base_size, self.interpolation_scale)
        x_BxTxD = constrain(x.reshape(b, -1, d) + jnp.asarray(pos, dt)[None], TOKEN_AXES)

        t = jnp.broadcast_to(jnp.asarray(timestep_B, jnp.float32).reshape(-1), (b,))
        emb_BxD = TimestepEmbedder(d, FREQUENCY_DIM, dtype=dt, name="t_embed")(t)
        if self.use_additional_conditions:
            if resolution_Bx2 is None or aspect_ratio_Bx1 is None:
                raise ValueError("this PixArt needs resolution [B, 2] and aspect_ratio [B, 1]")
            # diffusers embeds each number on its own (flattened), then concatenates per example.
            size = d // 3
            res = TimestepEmbedder(size, FREQUENCY_DIM, dtype=dt, name="resolution_embed")(
                jnp.asarray(resolution_Bx2, jnp.float32).reshape(-1)
            )
            ratio = TimestepEmbedder(size, FREQUENCY_DIM, dtype=dt, name="aspect_ratio_embed")(
                jnp.asarray(aspect_ratio_Bx1, jnp.float32).reshape(-1)
            )
            emb_BxD = emb_BxD + jnp.concatenate([res.reshape(b, -1), ratio.reshape(b, -1)], -1)
        t_Bx6D = dense(6 * d, (EMBED, MLP), dtype=dt, name="t_block")(nn.silu(emb_BxD))

        cond = jnp.asarray(encoder_hidden_states_BxLxE, dt)
        if self.caption_channels is not None:
            cond = dense(d, (EMBED, MLP), dtype=dt, name="caption_fc1")(cond)
            cond = dense(d, (MLP, EMBED), dtype=dt, name="caption_fc2")(
                nn.gelu(cond, approximate=True)
            )
        cond = constrain(cond, TOKEN_AXES)
        mask = jnp.ones(cond.shape[:2], jnp.int32)
        if encoder_attention_mask_BxL is not None:
            mask = jnp.asarray(encoder_attention_mask_BxL).astype(jnp.int32)
            # diffusers masks by adding -10000 to masked keys' logits: a row with every key
            # masked shifts all logits alike and attends to all of them, as unmasked.
            mask = jnp.where(mask.max(axis=1, keepdims=True) > 0, mask, 1)

        for i in range(self.num_layers):
            block = PixArtBlock(
                self.num_heads,
                self.head_dim,
                norm_eps=self.norm_eps,
                attention_bias=self.attention_bias,
                dtype=dt,
                attention=self.attention,
                name=f"block_{i}",
            )
            x_BxTxD = block(x_BxTxD, t_Bx6D, cond, mask)

        table = self.param(
            "scale_shift_table", partitioned(nn.initializers.normal(d**-0.5), (None, EMBED)), (2, d)
        )
        shift_BxD, scale_BxD = table[0] + emb_BxD, table[1] + emb_BxD
        x_BxTxD = modulate(adaln_norm(dt, "norm_out")(x_BxTxD), shift_BxD, scale_BxD)
        out = dense(p * p * self.out_channels, (EMBED, None), dtype=dt, name="proj_out")(x_BxTxD)
        return unpatchify(out, p, grid).astype(jnp.float32)
