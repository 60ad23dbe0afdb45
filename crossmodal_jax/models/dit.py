"""Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie, 2023) and token conditions.

The source modality arrives as token ids (UTF-8 bytes, class ids, VQ ids of another modality)
with a 0/1 mask. They are embedded; by default (`conditioning="in_context"`) they are placed in
front of the patch tokens, all tokens share the adaLN-Zero blocks and attend jointly, with padded
condition positions masked as keys. `conditioning="cross_attention"` or `"mmdit"` reads them
through cross-attention or SD3's joint attention instead (conditioning.py). The adaLN
vector is c = t_embedding + Dense(masked mean of the condition embeddings), or a learned null
vector when an example's mask is all zero (classifier-free-guidance drop): such an example sees
no condition token at all, so it is truly unconditional.

Input embedding (`PatchEmbed`) and output head (`FinalLayer`) are separate modules so that a
token-id target mode (embedding in, logits out; token_dit.TokenDiT) can replace them; the part in
between (condition vector, blocks) is shared through `condition_vector` and conditioning.py's
`make_blocks` and `run_blocks`.

`remat=True` recomputes each block's activations in the backward pass (nn.remat): same values and
gradients, activation memory of one block instead of `depth`. `dtype` is the compute dtype;
parameters are float32 whatever it is, outputs float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.conditioning import TOKEN_AXES, adaln_norm, make_blocks, run_blocks
from crossmodal_jax.models.layers import (
    ZEROS,
    TimestepEmbedder,
    dense,
    embed,
    modulate,
    partitioned,
    patchify,
    sincos_2d,
    unpatchify,
)
from crossmodal_jax.training.sharding import EMBED, MLP, constrain

DIT_PRESETS: dict[str, dict[str, int]] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

# The exact-layout numerics (DiT's t_freq_shift, pos_embed_col_first, mlp_norm_eps) of each code
# whose weights models/torch_convert.py converts (its docstring says what differs); "ours" is
# this project's own, the DiT defaults. A converted checkpoint computes what it was trained to
# only under its own layout (config generator.model.layout).
DIT_LAYOUTS: dict[str, dict[str, float | bool]] = {
    "ours": dict(t_freq_shift=0.0, pos_embed_col_first=False, mlp_norm_eps=1e-6),
    "facebook": dict(t_freq_shift=0.0, pos_embed_col_first=True, mlp_norm_eps=1e-6),
    "diffusers": dict(t_freq_shift=1.0, pos_embed_col_first=True, mlp_norm_eps=1e-5),
}


class PatchEmbed(nn.Module):
    """Image/latent grid -> patch tokens (patchify + Dense == the p x p stride-p conv of DiT)."""

    patch_size: int
    hidden_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        tokens = patchify(x_BxHxWxC.astype(self.dtype), self.patch_size)
        kernel_init = nn.initializers.xavier_uniform()
        return dense(
            self.hidden_size, (None, EMBED), dtype=self.dtype, kernel_init=kernel_init, name="proj"
        )(tokens)


class FinalLayer(nn.Module):
    """adaLN (zero init) + Dense to p*p*C features per patch (zero init): the DiT output head."""

    hidden_size: int
    out_features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, c_BxD: jax.Array) -> jax.Array:
        mod = dense(
            2 * self.hidden_size, (EMBED, MLP), dtype=self.dtype, kernel_init=ZEROS, name="adaLN"
        )(nn.silu(c_BxD))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = modulate(adaln_norm(self.dtype, "norm")(x_BxTxD), shift, scale)
        return dense(
            self.out_features, (EMBED, None), dtype=self.dtype, kernel_init=ZEROS, name="linear"
        )(h)


class ConditionEmbedder(nn.Module):
    """Condition [B, L] ids (or [B, L, F] vectors) + mask -> (tokens [B, L, D], pooled [B, D]).

    `feature_dim` > 0: the condition is continuous vectors (a tokenizer's quantized code vectors),
    projected by a Dense layer instead of looked up in a learned table: codes that are close in
    the codebook start close here too, which an id table has to learn from data (a few thousand
    examples are too few for 256 unrelated ids). Their pooled vector is a Dense map of all the
    (masked) positions' features rather than their mean, so the adaLN modulation sees where each
    code is, not only which codes occur.
    """

    vocab_size: int
    max_len: int
    hidden_size: int
    feature_dim: int = 0
    dtype: jnp.dtype = jnp.float32
    # With feature_dim: > 0 puts a hidden GELU layer of this width in the pooled map (a small MLP
    # over all positions' features instead of a linear map); 0 keeps it linear.
    pool_hidden: int = 0
    # With feature_dim: dropout rate on the condition's features in training (rng "dropout"), with
    # either pooling. A few thousand sources are easily memorised through the pooled map;
    # dropping features makes the caption depend on many of them.
    dropout: float = 0.0
    # With feature_dim: > 0 means the caller gives a `summary` [B, summary_dim] of the whole
    # condition (condition_stem.ConditionStem's max and mean over its grid), and the pooled vector
    # is an MLP of it instead of a map of every position's features.
    summary_dim: int = 0
    # With feature_dim: pool the projected tokens by their masked mean, as ids are pooled,
    # instead of a map of every position's features: a pretrained text encoder's states, whose
    # length x width (120 x 4096 for T5-XXL) would make that map larger than the model.
    mean_pool: bool = False

    @nn.compact
    def __call__(
        self,
        cond_BxL: jax.Array,
        mask_BxL: jax.Array,
        *,
        train: bool = False,
        summary_BxS: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        length = cond_BxL.shape[1]
        if length > self.max_len:
            raise ValueError(f"condition length {length} exceeds cond_len {self.max_len}")
        d = self.hidden_size
        std = nn.initializers.normal(0.02)
        pos_LxD = self.param("pos_embed", partitioned(std, (None, EMBED)), (self.max_len, d))
        type_D = self.param("type_embed", partitioned(std, (EMBED,)), (d,))
        null_D = self.param("null_embed", partitioned(std, (EMBED,)), (d,))

        mask = mask_BxL.astype(jnp.float32)
        count_B = jnp.sum(mask, axis=1)
        if self.feature_dim:  # vectors, projected as ids are embedded
            if self.dropout:
                cond_BxL = nn.Dropout(self.dropout, deterministic=not train)(cond_BxL)
            tokens = dense(d, (None, EMBED), dtype=self.dtype, name="feature_proj")(cond_BxL)
        else:
            tokens = embed(self.vocab_size, d, dtype=self.dtype, name="token_embed")(cond_BxL)
        tokens = tokens + (pos_LxD[:length] + type_D).astype(self.dtype)[None]
        tokens = constrain(tokens, TOKEN_AXES)

        if self.feature_dim and not self.mean_pool:  # a map of the whole condition's features
            if self.summary_dim:
                if summary_BxS is None:  # unconditional: the null vector replaces it below
                    summary_BxS = jnp.zeros((cond_BxL.shape[0], self.summary_dim), self.dtype)
                flat_BxF = summary_BxS
            else:
                flat_BxF = (cond_BxL * mask[..., None]).reshape(cond_BxL.shape[0], -1)
                pad = (self.max_len - length) * self.feature_dim
                flat_BxF = jnp.pad(flat_BxF, ((0, 0), (0, pad)))
            if self.pool_hidden:
                flat_BxF = dense(
                    self.pool_hidden, (EMBED, MLP), dtype=self.dtype, name="pool_hidden"
                )(flat_BxF)
                flat_BxF = nn.gelu(flat_BxF, approximate=True)
            pooled_BxD = dense(d, (EMBED, MLP), dtype=self.dtype, name="pool_proj")(flat_BxF)
        else:  # the masked mean of the tokens
            pooled_BxD = jnp.einsum("bld,bl->bd", tokens.astype(jnp.float32), mask)
            pooled_BxD = pooled_BxD / jnp.maximum(count_B, 1.0)[:, None]
            pooled_BxD = dense(d, (EMBED, MLP), dtype=self.dtype, name="pool_proj")(pooled_BxD)
        vec_BxD = jnp.where((count_B > 0)[:, None], pooled_BxD, null_D.astype(self.dtype))
        return tokens, vec_BxD


class LabelEmbedder(nn.Module):
    """Class labels [B] -> [B, D] from a table with num_classes + 1 rows (DiT's LabelEmbedder).

    The last row is the classifier-free-guidance null label; labels equal to num_classes, and
    examples whose mask is all zero, use it.
    """

    num_classes: int
    hidden_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, labels_B: jax.Array, keep_B: jax.Array | None = None) -> jax.Array:
        labels_B = jnp.asarray(labels_B, jnp.int32).reshape(-1)
        if keep_B is not None:
            labels_B = jnp.where(keep_B, labels_B, self.num_classes)
        table = embed(self.num_classes + 1, self.hidden_size, dtype=self.dtype, name="table")
        return table(labels_B)


def condition_vector(
    t_embed: nn.Module,
    cond_embed: nn.Module,
    t_B: jax.Array,
    cond_ids_BxL: jax.Array | None,
    cond_mask_BxL: jax.Array | None,
    *,
    train: bool = False,
    summary_BxS: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """(adaLN vector c [B, D], condition tokens [B, L, D] or None, key mask or None).

    `cond_ids=None` means unconditional: c uses the null vector (the same parameter as a
    dropped condition) and no condition token is added. A missing mask means all ones.
    `summary_BxS`: see ConditionEmbedder.summary_dim.
    """
    t_vec = t_embed(jnp.asarray(t_B, jnp.float32).reshape(-1))
    b = t_vec.shape[0]
    if cond_ids_BxL is None:
        f = cond_embed.feature_dim
        ids = jnp.zeros((b, 1, f), jnp.float32) if f else jnp.zeros((b, 1), jnp.int32)
        _, vec = cond_embed(ids, jnp.zeros((b, 1), jnp.float32))
        return t_vec + vec, None, None
    if cond_mask_BxL is None:
        cond_mask_BxL = jnp.ones(cond_ids_BxL.shape[:2], jnp.float32)
    tokens, vec = cond_embed(cond_ids_BxL, cond_mask_BxL, train=train, summary_BxS=summary_BxS)
    return t_vec + vec, tokens, cond_mask_BxL


class DiT(nn.Module):
    """Diffusion Transformer over a latent grid [B, h, w, C] with token-id conditions.

    `__call__(x, t, cond_ids, cond_mask)` returns the eps/v prediction f32[B, h, w, C]. `t` is
    in timestep units (see layers.timestep_embedding). `cond_ids=None` means no condition
    (every example uses the null vector).

    Class-label mode (`num_classes > 0`, the original DiT): `cond_ids` are labels i32[B] (or
    [B, 1]), c = t_embedding + label embedding, no condition tokens; None, a label equal to
    num_classes or an all-zero mask row selects the null label. `out_channels` (0: in_channels)
    lets learn-sigma checkpoints output [eps | variance] with 2C channels. `t_freq_shift`,
    `pos_embed_col_first` and `mlp_norm_eps` reproduce PyTorch DiT variants exactly (see
    torch_convert.py); their defaults are this project's own layout. `conditioning` picks how
    the condition tokens reach the patch tokens (conditioning.CONDITIONINGS).
    """

    input_size: tuple[int, int]
    in_channels: int
    patch_size: int = 1
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    cond_vocab_size: int = 256
    cond_len: int = 64
    # > 0: the condition is vectors of this width (a pretrained text encoder's hidden states),
    # projected and mean-pooled, instead of ids looked up in a table of cond_vocab_size.
    cond_feature_dim: int = 0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    num_classes: int = 0
    out_channels: int = 0
    t_freq_shift: float = 0.0
    pos_embed_col_first: bool = False
    mlp_norm_eps: float = 1e-6
    conditioning: str = "in_context"  # a key of conditioning.CONDITIONINGS
    attention: str = "xla"  # a key of attention.ATTENTION
    # A view of a joint model (joint_dit.JointDiT): the blocks and timestep embedder it shares
    # with the other tasks' views, and a learned task vector added to the adaLN vector.
    shared_blocks: Sequence[nn.Module] | None = None
    shared_t_embed: nn.Module | None = None
    task_vector: bool = False

    def setup(self):
        h, w = self.input_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch {p}")
        self.grid = (h // p, w // p)
        self.patch_embed = PatchEmbed(p, self.hidden_size, dtype=self.dtype)
        self.cond_embed = ConditionEmbedder(
            self.cond_vocab_size,
            self.cond_len,
            self.hidden_size,
            feature_dim=self.cond_feature_dim,
            mean_pool=bool(self.cond_feature_dim),
            dtype=self.dtype,
        )
        self.t_embed = (
            self.shared_t_embed
            if self.shared_t_embed is not None
            else TimestepEmbedder(self.hidden_size, dtype=self.dtype, freq_shift=self.t_freq_shift)
        )
        if self.num_classes:
            self.label_embed = LabelEmbedder(self.num_classes, self.hidden_size, dtype=self.dtype)
        if self.task_vector:
            self.task_embed = self.param(
                "task_embed",
                partitioned(nn.initializers.normal(0.02), (EMBED,)),
                (self.hidden_size,),
            )
        self.blocks = (
            self.shared_blocks
            if self.shared_blocks is not None
            else make_blocks(
                self.depth,
                self.hidden_size,
                self.num_heads,
                self.mlp_ratio,
                self.dtype,
                self.remat,
                self.mlp_norm_eps,
                self.conditioning,
                self.attention,
            )
        )
        out_c = self.out_channels or self.in_channels
        self.final_layer = FinalLayer(self.hidden_size, p * p * out_c, dtype=self.dtype)

    def embed_input(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Target -> tokens [B, T, D] with the fixed 2-D sin-cos position embedding."""
        pos = sincos_2d(self.hidden_size, *self.grid, col_first=self.pos_embed_col_first)
        pos_TxD = jnp.asarray(pos, self.dtype)
        tokens = self.patch_embed(x_BxHxWxC) + pos_TxD[None]
        return constrain(tokens, TOKEN_AXES)

    def output_head(self, tokens_BxTxD: jax.Array, c_BxD: jax.Array) -> jax.Array:
        """Target tokens -> prediction f32[B, H, W, C]."""
        out = self.final_layer(tokens_BxTxD, c_BxD)
        return unpatchify(out, self.patch_size, self.grid).astype(jnp.float32)

    def condition(
        self, t_B: jax.Array, cond_ids_BxL: jax.Array | None, cond_mask_BxL: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(adaLN vector c [B, D], condition tokens [B, L, D] or None, key mask or None)."""
        if self.num_classes:
            t_vec = self.t_embed(jnp.asarray(t_B, jnp.float32).reshape(-1))
            b = t_vec.shape[0]
            if cond_ids_BxL is None:
                labels, keep = jnp.full((b,), self.num_classes, jnp.int32), None
            else:
                labels = cond_ids_BxL.reshape(b, -1)[:, 0]
                keep = None if cond_mask_BxL is None else cond_mask_BxL.reshape(b, -1).max(1) > 0
            return t_vec + self.label_embed(labels, keep), None, None
        return condition_vector(self.t_embed, self.cond_embed, t_B, cond_ids_BxL, cond_mask_BxL)

    def __call__(
        self,
        x_BxHxWxC: jax.Array,
        t_B: jax.Array,
        cond_ids_BxL: jax.Array | None = None,
        cond_mask_BxL: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        del train  # no dropout; kept so every model shares one call signature
        c_BxD, cond_tokens, cond_mask = self.condition(t_B, cond_ids_BxL, cond_mask_BxL)
        if self.task_vector:
            c_BxD = c_BxD + self.task_embed.astype(c_BxD.dtype)
        x_tokens = self.embed_input(x_BxHxWxC)
        h = run_blocks(self.conditioning, self.blocks, x_tokens, c_BxD, cond_tokens, cond_mask)
        return self.output_head(h, c_BxD)
