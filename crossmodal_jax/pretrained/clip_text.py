"""CLIP text encoders (transformers `CLIPTextModel`, `CLIPTextModelWithProjection`, and the text
half of a `CLIPModel`) as the pretrained kind "clip_text": token ids -> the last hidden state after
`final_layer_norm` (what Stable Diffusion feeds its UNet).

The maths is transformers' (models/clip/modeling_clip.py): token plus learned position
embeddings, pre-norm blocks (LayerNorm, causal multi-head attention scaled by 1/sqrt(d), LayerNorm,
MLP with quick_gelu or gelu), a final LayerNorm. The attention mask is causal and, with an
attention_mask, also hides padded keys, as transformers' `create_causal_mask` does.

`pooled` also gives CLIP's pooled output (the hidden state at the end-of-text token, through
`text_projection` when the checkpoint has one): `part.call("pooled", ids, mask)`.

Checkpoints name tensors `text_model.*` (transformers 4, CLIPModel) or without that prefix
(transformers 5's CLIPTextModel); both are read.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.models.attention import attend
from crossmodal_jax.models.layers import dense, embed, gathered_keys, partitioned
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.t5 import ACTIVATIONS
from crossmodal_jax.pretrained.weights import Tensor, embedding, linear, norm
from crossmodal_jax.training.sharding import BATCH, EMBED, HEAD_DIM, HEADS, MLP, SEQ, constrain

NAMES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPModel", "clip_text_model")
# Buffers, and a full CLIPModel's image tower: not ours.
IGNORE = (
    r"(text_model\.)?embeddings\.position_ids",
    r"vision_model\..*",
    r"visual_projection\.weight",
    r"logit_scale",
)
_ROOT = "embeddings.token_embedding.weight"


def matches(ckpt: Checkpoint) -> bool:
    """Never from tensors alone: the head count is not in any shape, config.json is needed."""
    return False


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    where = ckpt.path / "config.json"
    if not ckpt.config:
        raise CheckpointError(f"{ckpt.path}: a CLIP text encoder needs its folder's config.json")
    # A CLIPModel keeps the text tower's settings under text_config (possibly only the keys that
    # differ from the defaults): transformers' CLIPTextConfig defaults fill the rest.
    cfg = ckpt.config.get("text_config") or ckpt.config
    act = str(cfg.get("hidden_act", "quick_gelu"))
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported")
    prefix = "text_model." if f"text_model.{_ROOT}" in ckpt else ""
    projection = "text_projection.weight"
    return dict(
        vocab_size=int(cfg.get("vocab_size", 49408)),
        hidden_size=int(cfg.get("hidden_size", 512)),
        intermediate_size=int(cfg.get("intermediate_size", 2048)),
        num_layers=int(cfg.get("num_hidden_layers", 12)),
        num_heads=int(cfg.get("num_attention_heads", 8)),
        max_positions=int(cfg.get("max_position_embeddings", 77)),
        epsilon=float(cfg.get("layer_norm_eps", 1e-5)),
        activation=act,
        eos_token_id=int(cfg.get("eos_token_id", 49407)),
        projection_dim=ckpt.shape(projection)[0] if projection in ckpt else None,
        prefix=prefix,
        family="clip",
    )


def _layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones_init(), (EMBED,)),
        bias_init=partitioned(nn.initializers.zeros_init(), (EMBED,)),
        name=name,
    )


class CLIPLayer(nn.Module):
    num_heads: int
    intermediate_size: int
    epsilon: float
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, length, d = x.shape
        n = self.num_heads
        h = _layer_norm(self.epsilon, "norm1")(x)
        q, k, v = (
            dense(d, (EMBED, HEADS), name=name)(h).reshape(b, length, n, d // n)
            for name in ("q", "k", "v")
        )
        q = constrain(q, (BATCH, SEQ, HEADS, HEAD_DIM))
        out = attend(q, gathered_keys(k), gathered_keys(v), mask).reshape(b, length, d)
        x = constrain(x + dense(d, (HEADS, EMBED), name="o")(out), (BATCH, SEQ, EMBED))
        h = dense(self.intermediate_size, (EMBED, MLP), name="fc1")(
            _layer_norm(self.epsilon, "norm2")(x)
        )
        h = constrain(ACTIVATIONS[self.activation](h), (BATCH, SEQ, MLP))
        return constrain(x + dense(d, (MLP, EMBED), name="fc2")(h), (BATCH, SEQ, EMBED))


class CLIPTextEncoder(nn.Module):
    """(input_ids, attention_mask) int [B, L] -> last hidden state [B, L, D]; L <= max_positions."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    epsilon: float
    activation: str
    eos_token_id: int
    projection_dim: int | None = None

    def setup(self):
        self.token_embedding = embed(self.vocab_size, self.hidden_size)
        self.position_embedding = self.param(
            "position_embedding",
            partitioned(nn.initializers.normal(0.01), (None, EMBED)),
            (self.max_positions, self.hidden_size),
        )
        self.layers = [
            CLIPLayer(self.num_heads, self.intermediate_size, self.epsilon, self.activation)
            for _ in range(self.num_layers)
        ]
        self.final_norm = _layer_norm(self.epsilon)
        if self.projection_dim is not None:
            self.projection = dense(self.projection_dim, (EMBED, None), use_bias=False)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.max_positions:
            raise CheckpointError(
                f"CLIP text encoder: {length} tokens, more than max_position_embeddings "
                f"{self.max_positions}"
            )
        x = self.token_embedding(input_ids) + self.position_embedding[None, :length]
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None, None] & (attention_mask > 0)[:, None, None, :]  # [B, 1, T, S]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.final_norm(x)
        if self.projection_dim is not None and self.is_initializing():
            self.projection(x[:, 0])  # setup's submodules exist once called: make its params
        return x

    def pooled(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """The hidden state at each text's end-of-text token [B, D] (projected [B, P] when the
        checkpoint has text_projection), picked as transformers does: configs from before its
        PR #24773 say eos_token_id 2 and mean the highest id, others the first eos_token_id."""
        x = self(input_ids, attention_mask)
        if self.eos_token_id == 2:
            where = jnp.argmax(input_ids, axis=-1)
        else:
            where = jnp.argmax((input_ids == self.eos_token_id).astype(jnp.int32), axis=-1)
        x = x[jnp.arange(x.shape[0]), where]
        if self.projection_dim is not None:
            x = self.projection(x)
        return x


def build(cfg: dict[str, Any]) -> CLIPTextEncoder:
    fields = {f for f in CLIPTextEncoder.__dataclass_fields__ if f not in ("parent", "name")}
    return CLIPTextEncoder(**{k: v for k, v in cfg.items() if k in fields})


def init_args(cfg: dict[str, Any]) -> tuple:
    ids = jax.ShapeDtypeStruct((1, min(4, cfg["max_positions"])), jnp.int32)
    return ids, ids


def recipe(cfg: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    p = cfg["prefix"]
    out: dict[str, Any] = {
        "token_embedding": embedding(f"{p}embeddings.token_embedding.weight"),
        "position_embedding": Tensor(f"{p}embeddings.position_embedding.weight"),
        "final_norm": norm(f"{p}final_layer_norm"),
    }
    for i in range(cfg["num_layers"]):
        theirs = f"{p}encoder.layers.{i}"
        out[f"layers_{i}"] = {
            "norm1": norm(f"{theirs}.layer_norm1"),
            "norm2": norm(f"{theirs}.layer_norm2"),
            "q": linear(f"{theirs}.self_attn.q_proj"),
            "k": linear(f"{theirs}.self_attn.k_proj"),
            "v": linear(f"{theirs}.self_attn.v_proj"),
            "o": linear(f"{theirs}.self_attn.out_proj"),
            "fc1": linear(f"{theirs}.mlp.fc1"),
            "fc2": linear(f"{theirs}.mlp.fc2"),
        }
    if cfg["projection_dim"] is not None:
        out["projection"] = linear("text_projection", bias=False)
    return out
