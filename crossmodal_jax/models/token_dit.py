"""Token-id Diffusion Transformer for discrete (absorbing-state / masked) diffusion.

The target is a sequence of ids (text bytes, or VQ ids of an image/video flattened to [B, L]);
some of them are the mask token. The model predicts, for every position, logits over the
`vocab_size` ids. Everything between the input embedding and the output head is the
DiT's: adaLN-Zero blocks, condition tokens with their 0/1 key mask (in context, through
cross-attention or MMDiT joint attention: `conditioning`, see conditioning.py), the pooled
condition + timestep vector in adaLN, the null vector for an all-zero mask (dit.py).

The vocabulary includes the absorbing mask token (text: data.text.MASK_ID; VQ ids: num_codes,
with vocab_size = num_codes + 1): one table of vocab_size rows embeds the input and the logits
have vocab_size columns; the loss/sampler suppress the mask id's logit (diffusion/masked.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models.condition_stem import ConditionStem
from crossmodal_jax.models.conditioning import TOKEN_AXES, make_blocks, run_blocks
from crossmodal_jax.models.dit import ConditionEmbedder, FinalLayer, condition_vector
from crossmodal_jax.models.layers import TimestepEmbedder, embed, partitioned
from crossmodal_jax.training.sharding import EMBED, constrain


class TokenDiT(nn.Module):
    """DiT over token ids: `__call__(ids [B, L], t [B], cond_ids, cond_mask) -> f32[B, L, V]`.

    `t` is in timestep units like DiT (continuous t in [0, 1] should be scaled by ~1000, see
    layers.timestep_embedding). `cond_ids=None` means unconditional (the null vector, no
    condition tokens). L may be shorter than `seq_len` (positions 0..L-1 are used).
    At init the logits are exactly zero (zero-initialised adaLN gates and output head).
    """

    seq_len: int
    vocab_size: int
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    cond_vocab_size: int = 256
    cond_len: int = 64
    cond_feature_dim: int = 0  # > 0: conditions are f32[B, L, F] vectors (see ConditionEmbedder)
    # (with cond_conv: F of each code of the grid the stem reads; cond_len counts its tokens)
    cond_pool_hidden: int = 0  # > 0: MLP instead of linear pooling of vector conditions
    cond_dropout: float = 0.0  # dropout on vector conditions' features when train=True
    # Vector conditions: pool them into the adaLN vector by their masked mean (ConditionEmbedder
    # mean_pool) instead of a map of every position's features, whose size grows with the
    # condition's length (a 35 s clip's 440 tokens x 80 features: 27 M parameters at width 768).
    cond_mean_pool: bool = False
    # Vector conditions through a ConditionStem (condition_stem.py): conv widths (() = none), its
    # kernel and first layer's stride (per axis of cond_grid), the code grid [B, prod(cond_grid),
    # F] fills, and the patch its features are grouped by into cond_len tokens.
    cond_conv: tuple[int, ...] = ()
    cond_conv_kernel: int | tuple[int, ...] = 3
    cond_conv_stride: tuple[int, ...] = ()
    cond_grid: tuple[int, ...] = ()
    cond_patch: tuple[int, ...] = ()
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    conditioning: str = "in_context"  # a key of conditioning.CONDITIONINGS
    attention: str = "xla"  # a key of attention.ATTENTION
    # A view of a joint model (joint_dit.JointDiT): see dit.DiT.
    shared_blocks: Sequence[nn.Module] | None = None
    shared_t_embed: nn.Module | None = None
    task_vector: bool = False

    def setup(self):
        d = self.hidden_size
        self.token_embed = embed(self.vocab_size, d, dtype=self.dtype)
        # Learned positions (std 0.02, GPT-style): a 1-D sequence has no fixed 2-D structure.
        self.pos_embed = self.param(
            "pos_embed", partitioned(nn.initializers.normal(0.02), (None, EMBED)), (self.seq_len, d)
        )
        feature_dim, summary_dim, cond_len = self.cond_feature_dim, 0, self.cond_len
        self.cond_stem = None
        if self.cond_conv:
            self.cond_stem = ConditionStem(
                self.cond_grid,
                self.cond_conv,
                self.cond_conv_kernel,
                self.cond_patch,
                self.cond_conv_stride,
                self.dtype,
            )
            feature_dim, summary_dim = self.cond_stem.out_dim, 2 * self.cond_conv[-1]
            cond_len = self.cond_stem.num_tokens
        self.cond_embed = ConditionEmbedder(
            self.cond_vocab_size,
            cond_len,
            d,
            feature_dim,
            dtype=self.dtype,
            pool_hidden=self.cond_pool_hidden,
            dropout=self.cond_dropout,
            summary_dim=summary_dim,
            mean_pool=self.cond_mean_pool,
        )
        self.t_embed = (
            self.shared_t_embed
            if self.shared_t_embed is not None
            else TimestepEmbedder(d, dtype=self.dtype)
        )
        if self.task_vector:
            self.task_embed = self.param(
                "task_embed", partitioned(nn.initializers.normal(0.02), (EMBED,)), (d,)
            )
        self.blocks = (
            self.shared_blocks
            if self.shared_blocks is not None
            else make_blocks(
                self.depth,
                d,
                self.num_heads,
                self.mlp_ratio,
                self.dtype,
                self.remat,
                conditioning=self.conditioning,
                attention=self.attention,
            )
        )
        self.final_layer = FinalLayer(d, self.vocab_size, dtype=self.dtype)

    @property
    def cond_input_shape(self) -> tuple[int, int]:
        """(positions, features) of the condition `__call__` takes (features 0: ids [B, L])."""
        if self.cond_conv:
            return int(np.prod(self.cond_grid)), self.cond_feature_dim
        return self.cond_len, self.cond_feature_dim

    def embed_input(self, ids_BxL: jax.Array) -> jax.Array:
        """Target ids (mask token included) -> tokens [B, L, D] with learned positions."""
        length = ids_BxL.shape[1]
        if length > self.seq_len:
            raise ValueError(f"target length {length} exceeds seq_len {self.seq_len}")
        tokens = self.token_embed(ids_BxL) + self.pos_embed[:length].astype(self.dtype)[None]
        return constrain(tokens, TOKEN_AXES)

    def __call__(
        self,
        ids_BxL: jax.Array,
        t_B: jax.Array,
        cond_ids_BxL: jax.Array | None = None,
        cond_mask_BxL: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        summary = None
        if self.cond_stem is not None and cond_ids_BxL is not None:
            cond_ids_BxL, summary = self.cond_stem(cond_ids_BxL)
            if cond_mask_BxL is not None:  # the convs read the whole grid: kept whole or dropped
                keep_B = jnp.max(cond_mask_BxL, axis=1, keepdims=True)
                cond_mask_BxL = jnp.broadcast_to(keep_B, cond_ids_BxL.shape[:2])
        c_BxD, cond_tokens, cond_mask = condition_vector(
            self.t_embed,
            self.cond_embed,
            t_B,
            cond_ids_BxL,
            cond_mask_BxL,
            train=train,
            summary_BxS=summary,
        )
        if self.task_vector:
            c_BxD = c_BxD + self.task_embed.astype(c_BxD.dtype)
        x_tokens = self.embed_input(ids_BxL)
        h = run_blocks(self.conditioning, self.blocks, x_tokens, c_BxD, cond_tokens, cond_mask)
        return self.final_layer(h, c_BxD).astype(jnp.float32)
