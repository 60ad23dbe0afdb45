"""The DiT's transformer blocks, one entry per way the condition reaches the target tokens.

`generator.model.conditioning` names an entry of `CONDITIONINGS`. DiT (latent grids, dit.py) and
TokenDiT (token ids, token_dit.py) build their blocks with `make_blocks` and run them with
`run_blocks`, so both models get every variant:

- "in_context" (the default, DiT's in-context conditioning): the condition tokens are placed in
  front of the target tokens and all of them go through the same adaLN-Zero blocks, attending
  jointly. No extra parameters; the condition tokens pay for the MLP in every block.
- "cross_attention" (the DiT paper's cross-attention block, as PixArt-α uses it): adaLN-Zero
  self-attention over the target tokens only, then a cross-attention sublayer (queries from the
  target tokens, keys and values from the condition tokens) behind a zero-initialised adaLN gate,
  then the MLP.
- "mmdit" (SD3's joint attention, Esser et al. 2024): two streams, condition and target, each with
  its own adaLN modulation, q/k/v, output projection and MLP, and one attention over both. The
  last block keeps only the condition stream's keys and values (SD3's `context_pre_only`): its
  condition outputs would never be read.

In every variant the adaLN vector c is t + the pooled condition (dit.condition_vector), padded
condition positions are masked as keys so they cannot change any output, and every block is the
identity on the target tokens at init (zero-initialised gates). Without condition tokens (class
labels, `cond_ids=None`) the cross-attention and MMDiT blocks read one fully masked zero token: the
parameters do not depend on whether init saw a condition, and the output equals that of a
condition whose mask is all zero (a classifier-free-guidance drop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.attention import attend
from crossmodal_jax.models.layers import (
    ZEROS,
    Mlp,
    SelfAttention,
    dense,
    dense_general,
    gathered_keys,
    modulate,
    partitioned,
)
from crossmodal_jax.training.sharding import BATCH, EMBED, HEAD_DIM, HEADS, MLP, SEQ, constrain

TOKEN_AXES = (BATCH, SEQ, EMBED)
HEAD_AXES = (BATCH, SEQ, HEADS, HEAD_DIM)

# (blocks, target tokens [B, T, D], adaLN vector [B, D], condition tokens [B, L, D] or None,
# condition mask [B, L] or None) -> target tokens [B, T, D]
Runner = Callable[
    [Sequence[nn.Module], jax.Array, jax.Array, jax.Array | None, jax.Array | None], jax.Array
]


def adaln_norm(dtype: jnp.dtype, name: str, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm without affine parameters: adaLN supplies the per-example scale and shift."""
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _affine_norm(dtype: jnp.dtype, name: str) -> nn.LayerNorm:
    # Where no adaLN modulation follows, the norm learns its own (annotated) scale and bias.
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones_init(), (EMBED,)),
        bias_init=partitioned(ZEROS, (EMBED,)),
        name=name,
    )


def _heads(x_BxLxD: jax.Array, num_heads: int, dtype: jnp.dtype, name: str) -> jax.Array:
    """Tokens -> one of q, k, v [B, L, N, H] (a submodule of the calling compact block)."""
    d = x_BxLxD.shape[-1]
    if d % num_heads:
        raise ValueError(f"hidden size {d} is not divisible by num_heads {num_heads}")
    proj = dense_general(
        (d,), (num_heads, d // num_heads), (EMBED, HEADS, HEAD_DIM), dtype=dtype, name=name
    )
    return constrain(proj(x_BxLxD), HEAD_AXES)


def _merge_heads(out_BxLxNxH: jax.Array, dtype: jnp.dtype, name: str) -> jax.Array:
    n, h = out_BxLxNxH.shape[-2:]
    return dense_general((n, h), (n * h,), (HEADS, HEAD_DIM, EMBED), dtype=dtype, name=name)(
        out_BxLxNxH
    )


def _attend(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, key_mask_BxS: jax.Array, impl: str) -> jax.Array:
    # Masked keys get exactly zero weight whenever a query has one unmasked key.
    mask = (key_mask_BxS > 0)[:, None, None, :]  # [B, 1 (heads), 1 (queries), S]
    k_BxSxNxH, v_BxSxNxH = (gathered_keys(a) for a in (k_BxSxNxH, v_BxSxNxH))
    out = attend(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, impl=impl)
    return constrain(out, HEAD_AXES)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; the identity at init (zero-initialised gates)."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    # eps of the pre-MLP LayerNorm: diffusers' DiT uses its config's norm_eps (1e-5 by default)
    # there, facebookresearch/DiT 1e-6 like every other norm.
    mlp_norm_eps: float = 1e-6
    attention: str = "xla"  # a key of attention.ATTENTION

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, c_BxD: jax.Array, key_mask_BxL: jax.Array | None = None
    ) -> jax.Array:
        mod_Bx6D = dense(
            6 * self.hidden_size, (EMBED, MLP), dtype=self.dtype, kernel_init=ZEROS, name="adaLN"
        )(nn.silu(c_BxD))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod_Bx6D, 6, -1)

        h = modulate(adaln_norm(self.dtype, "norm1")(x_BxLxD), shift_msa, scale_msa)
        attn = SelfAttention(
            self.num_heads, dtype=self.dtype, attention=self.attention, name="attn"
        )
        h = attn(h, key_mask_BxL)
        x_BxLxD = constrain(x_BxLxD + gate_msa[:, None, :] * h, TOKEN_AXES)

        norm2 = adaln_norm(self.dtype, "norm2", self.mlp_norm_eps)
        h = modulate(norm2(x_BxLxD), shift_mlp, scale_mlp)
        h = Mlp(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
        return constrain(x_BxLxD + gate_mlp[:, None, :] * h, TOKEN_AXES)


class CrossAttentionBlock(nn.Module):
    """adaLN-Zero self-attention over the target, gated cross-attention to the condition, MLP.

    `__call__(x [B, T, D], c [B, D], cond [B, L, D], cond_mask [B, L]) -> [B, T, D]`. The adaLN
    vector gives DiTBlock's six chunks and a seventh, the cross-attention's gate: zero at init
    (the block is then the identity), and later a per-example, per-time strength of the condition.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    mlp_norm_eps: float = 1e-6
    attention: str = "xla"  # a key of attention.ATTENTION

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, c_BxD: jax.Array, cond_BxLxD: jax.Array, cond_mask_BxL: jax.Array
    ) -> jax.Array:
        d, dt = self.hidden_size, self.dtype
        mod_Bx7D = dense(7 * d, (EMBED, MLP), dtype=dt, kernel_init=ZEROS, name="adaLN")(
            nn.silu(c_BxD)
        )
        shift_msa, scale_msa, gate_msa, gate_ca, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            mod_Bx7D, 7, -1
        )
        h = modulate(adaln_norm(dt, "norm1")(x_BxTxD), shift_msa, scale_msa)
        h = SelfAttention(self.num_heads, dtype=dt, attention=self.attention, name="attn")(h)
        x_BxTxD = constrain(x_BxTxD + gate_msa[:, None, :] * h, TOKEN_AXES)

        q = _heads(_affine_norm(dt, "norm_cross")(x_BxTxD), self.num_heads, dt, "cross_query")
        # The condition tokens come from an embedding table or a projection (std ~0.02):
        # normalised here, as the in-context blocks' norm1 does for them.
        kv_in = _affine_norm(dt, "norm_cond")(cond_BxLxD)
        k, v = (_heads(kv_in, self.num_heads, dt, n) for n in ("cross_key", "cross_value"))
        h = _merge_heads(_attend(q, k, v, cond_mask_BxL, self.attention), dt, "cross_out")
        # A fully masked row (dropped for guidance, or no condition) would average the masked
        # keys' values; such an example gets no cross-attention at all.
        has_cond_B = jnp.max(cond_mask_BxL, axis=1) > 0
        h = jnp.where(has_cond_B[:, None, None], h, jnp.zeros_like(h))
        x_BxTxD = constrain(x_BxTxD + gate_ca[:, None, :] * h, TOKEN_AXES)

        h = modulate(adaln_norm(dt, "norm2", self.mlp_norm_eps)(x_BxTxD), shift_mlp, scale_mlp)
        h = Mlp(int(d * self.mlp_ratio), dtype=dt, name="mlp")(h)
        return constrain(x_BxTxD + gate_mlp[:, None, :] * h, TOKEN_AXES)


class MMDiTBlock(nn.Module):
    """SD3's joint block: per-stream weights (prefix "x_" target, "c_" condition), one attention.

    `__call__(x [B, T, D], c [B, D], cond [B, L, D], cond_mask [B, L]) -> (x, cond)`. Both
    streams are adaLN-Zero modulated by the same vector c; masked condition positions are masked
    as keys for every query. `last=True`: the condition stream only lends its keys and values
    (modulated by shift and scale, no gates, no query, output or MLP) and `cond` comes back None.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    mlp_norm_eps: float = 1e-6
    attention: str = "xla"  # a key of attention.ATTENTION
    last: bool = False

    def _modulation(self, c_BxD: jax.Array, chunks: int, name: str) -> list[jax.Array]:
        mod = dense(
            chunks * self.hidden_size, (EMBED, MLP), dtype=self.dtype, kernel_init=ZEROS, name=name
        )(nn.silu(c_BxD))
        return jnp.split(mod, chunks, -1)

    def _mlp(self, x_BxLxD, shift, scale, gate, stream: str) -> jax.Array:
        norm2 = adaln_norm(self.dtype, f"{stream}_norm2", self.mlp_norm_eps)
        h = modulate(norm2(x_BxLxD), shift, scale)
        h = Mlp(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype, name=f"{stream}_mlp")(h)
        return constrain(x_BxLxD + gate[:, None, :] * h, TOKEN_AXES)

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, c_BxD: jax.Array, cond_BxLxD: jax.Array, cond_mask_BxL: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        dt, n, num_cond = self.dtype, self.num_heads, cond_BxLxD.shape[1]
        x_shift, x_scale, x_gate, x_shift2, x_scale2, x_gate2 = self._modulation(
            c_BxD, 6, "x_adaLN"
        )
        c_mod = self._modulation(c_BxD, 2 if self.last else 6, "c_adaLN")

        hx = modulate(adaln_norm(dt, "x_norm1")(x_BxTxD), x_shift, x_scale)
        hc = modulate(adaln_norm(dt, "c_norm1")(cond_BxLxD), c_mod[0], c_mod[1])
        k = jnp.concatenate([_heads(hc, n, dt, "c_key"), _heads(hx, n, dt, "x_key")], axis=1)
        v = jnp.concatenate([_heads(hc, n, dt, "c_value"), _heads(hx, n, dt, "x_value")], axis=1)
        target_mask = jnp.ones(x_BxTxD.shape[:2], jnp.float32)
        key_mask = jnp.concatenate([cond_mask_BxL.astype(jnp.float32), target_mask], axis=1)
        q = _heads(hx, n, dt, "x_query")
        if not self.last:  # the condition's queries too: one attention over both streams
            q = jnp.concatenate([_heads(hc, n, dt, "c_query"), q], axis=1)
        out = _attend(q, k, v, key_mask, self.attention)

        out_x = _merge_heads(out[:, -x_BxTxD.shape[1] :], dt, "x_out")
        x_BxTxD = constrain(x_BxTxD + x_gate[:, None, :] * out_x, TOKEN_AXES)
        x_BxTxD = self._mlp(x_BxTxD, x_shift2, x_scale2, x_gate2, "x")
        if self.last:
            return x_BxTxD, None
        _, _, c_gate, c_shift2, c_scale2, c_gate2 = c_mod
        out_c = _merge_heads(out[:, :num_cond], dt, "c_out")
        cond_BxLxD = constrain(cond_BxLxD + c_gate[:, None, :] * out_c, TOKEN_AXES)
        return x_BxTxD, self._mlp(cond_BxLxD, c_shift2, c_scale2, c_gate2, "c")


def joint_blocks(
    blocks: Sequence[nn.Module],
    x_BxTxD: jax.Array,
    c_BxD: jax.Array,
    cond_tokens_BxLxD: jax.Array | None,
    cond_mask_BxL: jax.Array | None,
) -> jax.Array:
    """In context: [condition tokens | target tokens] -> blocks -> target tokens [B, T, D].

    Condition and target tokens attend jointly; masked condition positions are masked as keys,
    so they cannot influence any output.
    """
    num_target = x_BxTxD.shape[1]
    if cond_tokens_BxLxD is None:
        h, key_mask = x_BxTxD, None
    else:
        h = jnp.concatenate([cond_tokens_BxLxD.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
        target_mask = jnp.ones((x_BxTxD.shape[0], num_target), jnp.float32)
        key_mask = jnp.concatenate([cond_mask_BxL.astype(jnp.float32), target_mask], axis=1)
    h = constrain(h, TOKEN_AXES)
    for block in blocks:
        h = block(h, c_BxD, key_mask)
    return h[:, -num_target:]


def _condition_or_null(
    x_BxTxD: jax.Array, cond_BxLxD: jax.Array | None, cond_mask_BxL: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """The condition tokens and mask, or one zero token masked out when there is none."""
    b, d = x_BxTxD.shape[0], x_BxTxD.shape[-1]
    if cond_BxLxD is None:
        return jnp.zeros((b, 1, d), x_BxTxD.dtype), jnp.zeros((b, 1), jnp.float32)
    if cond_mask_BxL is None:
        cond_mask_BxL = jnp.ones(cond_BxLxD.shape[:2], jnp.float32)
    cond = constrain(cond_BxLxD.astype(x_BxTxD.dtype), TOKEN_AXES)
    return cond, cond_mask_BxL.astype(jnp.float32)


def cross_attention_blocks(
    blocks: Sequence[nn.Module],
    x_BxTxD: jax.Array,
    c_BxD: jax.Array,
    cond_tokens_BxLxD: jax.Array | None,
    cond_mask_BxL: jax.Array | None,
) -> jax.Array:
    """Target tokens [B, T, D] through CrossAttentionBlocks reading the (fixed) condition tokens."""
    cond, mask = _condition_or_null(x_BxTxD, cond_tokens_BxLxD, cond_mask_BxL)
    h = constrain(x_BxTxD, TOKEN_AXES)
    for block in blocks:
        h = block(h, c_BxD, cond, mask)
    return h


def mmdit_blocks(
    blocks: Sequence[nn.Module],
    x_BxTxD: jax.Array,
    c_BxD: jax.Array,
    cond_tokens_BxLxD: jax.Array | None,
    cond_mask_BxL: jax.Array | None,
) -> jax.Array:
    """Both streams through MMDiTBlocks; the target stream's tokens [B, T, D] come back."""
    cond, mask = _condition_or_null(x_BxTxD, cond_tokens_BxLxD, cond_mask_BxL)
    h = constrain(x_BxTxD, TOKEN_AXES)
    for block in blocks:
        h, cond = block(h, c_BxD, cond, mask)
    return h


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """A conditioning variant: its block class, how blocks run, and whether the last differs."""

    block: type[nn.Module]
    run: Runner
    last_block_flag: bool = False  # the last block is built with last=True (MMDiTBlock)


CONDITIONINGS: dict[str, Conditioning] = {
    "in_context": Conditioning(DiTBlock, joint_blocks),
    "cross_attention": Conditioning(CrossAttentionBlock, cross_attention_blocks),
    "mmdit": Conditioning(MMDiTBlock, mmdit_blocks, last_block_flag=True),
}
# nn.remat recomputes a block's activations in the backward pass; the parameter names stay.
_REMAT = {name: nn.remat(entry.block) for name, entry in CONDITIONINGS.items()}


def _entry(conditioning: str) -> Conditioning:
    if conditioning not in CONDITIONINGS:
        raise ValueError(
            f"unknown conditioning {conditioning!r}; available: {', '.join(CONDITIONINGS)}"
        )
    return CONDITIONINGS[conditioning]


def make_blocks(
    depth: int,
    hidden_size: int,
    num_heads: int,
    mlp_ratio: float,
    dtype: jnp.dtype,
    remat: bool = False,
    mlp_norm_eps: float = 1e-6,
    conditioning: str = "in_context",
    attention: str = "xla",
) -> list[nn.Module]:
    """`depth` blocks of a conditioning variant for a setup(); remat keeps the parameter names."""
    entry = _entry(conditioning)
    block_cls = _REMAT[conditioning] if remat else entry.block
    kw = dict(dtype=dtype, mlp_norm_eps=mlp_norm_eps, attention=attention)
    return [
        block_cls(
            hidden_size,
            num_heads,
            mlp_ratio,
            **kw,
            **({"last": i == depth - 1} if entry.last_block_flag else {}),
        )
        for i in range(depth)
    ]


def run_blocks(
    conditioning: str,
    blocks: Sequence[nn.Module],
    x_BxTxD: jax.Array,
    c_BxD: jax.Array,
    cond_tokens_BxLxD: jax.Array | None,
    cond_mask_BxL: jax.Array | None,
) -> jax.Array:
    """Target tokens [B, T, D] through `make_blocks`' blocks, the way `conditioning` runs them."""
    return _entry(conditioning).run(blocks, x_BxTxD, c_BxD, cond_tokens_BxLxD, cond_mask_BxL)
