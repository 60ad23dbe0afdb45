"""T5 encoders (transformers `T5EncoderModel`, the encoder of `T5ForConditionalGeneration`, mT5,
UMT5) as the pretrained kind "t5": token ids -> the last hidden state after `final_layer_norm`.

The maths is transformers' (models/t5/modeling_t5.py, models/umt5/modeling_umt5.py): pre-norm
blocks with RMS layer norms (no mean, no bias), attention without the 1/sqrt(d) scaling and with a
learned bias per head indexed by bucketed relative position (the first layer's, shared by all
layers; UMT5: one per layer), and a feed-forward that is either `relu` (T5 1.0) or gated
(`gated-gelu`: T5 v1.1, Flan-T5, mT5, UMT5; gelu_new is the tanh approximation).

Parameters are Dense kernels [in, out] (q, k, v, o: heads are reshaped in the activations), so
every recipe leaf is a pure transpose and reads slice by slice on a mesh.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.models.layers import dense, embed, gathered_keys, partitioned
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import Tensor, embedding, linear
from crossmodal_jax.training.sharding import BATCH, EMBED, HEAD_DIM, HEADS, MLP, SEQ, constrain

NAMES = (
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "T5Model",
    "MT5EncoderModel",
    "MT5ForConditionalGeneration",
    "MT5Model",
    "UMT5EncoderModel",
    "UMT5ForConditionalGeneration",
    "UMT5Model",
    "t5",
    "mt5",
    "umt5",
)
# A full seq2seq folder loads as its encoder: the decoder and LM head are not ours. `shared` and
# `encoder.embed_tokens` are one tied table; the recipe reads whichever is stored.
IGNORE = (r"decoder\..*", r"lm_head\.weight", r"shared\.weight", r"encoder\.embed_tokens\.weight")

# transformers' ACT2FN names a config may use. gelu_new / gelu_pytorch_tanh / gelu_fast are the
# tanh approximation; "gelu" is the exact erf form.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def matches(ckpt: Checkpoint) -> bool:
    """Never from tensors alone: the head count is not in any shape, config.json is needed."""
    return False


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    cfg = ckpt.config
    where = ckpt.path / "config.json"
    if not cfg:
        raise CheckpointError(f"{ckpt.path}: a T5 encoder needs its folder's config.json")
    arch = str((cfg.get("architectures") or [""])[0])
    umt5 = cfg.get("model_type") == "umt5" or arch.startswith("UMT5")  # a bias in every layer
    # transformers' defaults (T5Config / UMT5Config) for keys an older config.json leaves out.
    proj = str(cfg.get("feed_forward_proj", "gated-gelu" if umt5 else "relu"))
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise CheckpointError(f"{where}: feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT'")
    # transformers maps the legacy "gated-gelu" to gelu_new (tanh), whatever dense_act_fn says.
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in ACTIVATIONS:
        raise CheckpointError(
            f"{where}: feed_forward_proj {proj!r}: activation {act!r} unsupported"
        )
    if cfg.get("is_decoder"):
        raise CheckpointError(f"{where}: is_decoder true: only T5 encoders are supported")
    default = dict(vocab_size=250112, d_ff=1024, num_layers=8, num_heads=6) if umt5 else {}
    get = lambda key, value: int(cfg.get(key, default.get(key, value)))
    return dict(
        vocab_size=get("vocab_size", 32128),
        d_model=get("d_model", 512),
        d_kv=get("d_kv", 64),
        num_heads=get("num_heads", 8),
        d_ff=get("d_ff", 2048),
        num_layers=get("num_layers", 6),
        num_buckets=get("relative_attention_num_buckets", 32),
        max_distance=get("relative_attention_max_distance", 128),
        epsilon=float(cfg.get("layer_norm_epsilon", 1e-6)),
        gated=parts[0] == "gated" and len(parts) == 2,
        activation=act,
        bias_per_layer=umt5,
        pad_token_id=int(cfg.get("pad_token_id", 0) or 0),
        family="t5",
    )


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of (key - query) for an encoder (bidirectional), int [length, length].

    Computed in numpy float32 with transformers' exact sequence of operations: a bucket is a
    truncated log ratio, and XLA's log could round an exact boundary (e.g. distance 16 of 32
    buckets up to 128) to the neighbouring bucket. Checked equal to transformers' for lengths up
    to 2048 and the usual (buckets, max distance).
    """
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    log = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(exact))
    scaled = log / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return (out + np.where(rel < exact, rel, large)).astype(np.int32)


def _rms_norm(eps: float, name: str) -> nn.RMSNorm:
    # T5LayerNorm: x * rsqrt(mean(x^2) + eps) * weight, statistics in float32.
    return nn.RMSNorm(
        epsilon=eps,
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones_init(), (EMBED,)),
        name=name,
    )


class T5Attention(nn.Module):
    """Self-attention, unscaled, plus the relative position bias (own or passed in)."""

    num_heads: int
    d_kv: int
    num_buckets: int
    max_distance: int
    has_bias: bool

    @nn.compact
    def __call__(self, x, key_mask, bias):
        """x [B, L, D], key_mask [B, L] (1 = real token), bias [1, N, L, L] from the first
        layer or None -> (output [B, L, D], the bias used, to pass to the next layer)."""
        b, length, d = x.shape
        n, h = self.num_heads, self.d_kv
        q, k, v = (
            dense(n * h, (EMBED, HEADS), use_bias=False, name=name)(x).reshape(b, length, n, h)
            for name in ("q", "k", "v")
        )
        q = constrain(q, (BATCH, SEQ, HEADS, HEAD_DIM))
        k, v = gathered_keys(k), gathered_keys(v)
        if self.has_bias:
            table = self.param(
                "relative_bias",
                partitioned(nn.initializers.normal(d**-0.5), (None, HEADS)),
                (self.num_buckets, n),
            )
            buckets = relative_buckets(length, self.num_buckets, self.max_distance)
            bias = jnp.take(table, jnp.asarray(buckets), axis=0).transpose(2, 0, 1)[None]
        logits = jnp.einsum("btnh,bsnh->bnts", q, k) + bias  # no 1/sqrt(h): T5 folds it in
        logits = jnp.where(key_mask[:, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bnts,bsnh->btnh", weights, v).reshape(b, length, n * h)
        return dense(d, (HEADS, EMBED), use_bias=False, name="o")(out), bias


class T5Encoder(nn.Module):
    """transformers' T5Stack as an encoder: (input_ids, attention_mask) int [B, L] -> [B, L, D]."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    num_buckets: int
    max_distance: int
    epsilon: float
    gated: bool
    activation: str
    bias_per_layer: bool

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        x = embed(self.vocab_size, self.d_model, name="embed")(input_ids)
        act = ACTIVATIONS[self.activation]
        bias = None
        for i in range(self.num_layers):
            attention = T5Attention(
                self.num_heads,
                self.d_kv,
                self.num_buckets,
                self.max_distance,
                has_bias=self.bias_per_layer or i == 0,
                name=f"block_{i}_attention",
            )
            h, layer_bias = attention(
                _rms_norm(self.epsilon, f"block_{i}_norm1")(x), attention_mask, bias
            )
            bias = None if self.bias_per_layer else layer_bias
            x = constrain(x + h, (BATCH, SEQ, EMBED))
            h = _rms_norm(self.epsilon, f"block_{i}_norm2")(x)
            name = f"block_{i}_mlp"
            if self.gated:
                gate = dense(self.d_ff, (EMBED, MLP), use_bias=False, name=f"{name}_wi_0")(h)
                h = act(gate) * dense(self.d_ff, (EMBED, MLP), use_bias=False, name=f"{name}_wi_1")(
                    h
                )
            else:
                h = act(dense(self.d_ff, (EMBED, MLP), use_bias=False, name=f"{name}_wi")(h))
            h = constrain(h, (BATCH, SEQ, MLP))
            x = x + dense(self.d_model, (MLP, EMBED), use_bias=False, name=f"{name}_wo")(h)
            x = constrain(x, (BATCH, SEQ, EMBED))
        return _rms_norm(self.epsilon, "final_norm")(x)


def build(cfg: dict[str, Any]) -> T5Encoder:
    fields = {f for f in T5Encoder.__dataclass_fields__ if f not in ("parent", "name")}
    return T5Encoder(**{k: v for k, v in cfg.items() if k in fields})


def init_args(cfg: dict[str, Any]) -> tuple:
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return ids, ids


def recipe(cfg: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    """Our names <- transformers'; the tied embedding from whichever name the file stores."""
    table = "encoder.embed_tokens.weight"
    table = table if table in ckpt else "shared.weight"
    out: dict[str, Any] = {
        "embed": embedding(table),
        "final_norm": {"scale": Tensor("encoder.final_layer_norm.weight")},
    }
    for i in range(cfg["num_layers"]):
        theirs = f"encoder.block.{i}.layer"
        attention = {n: linear(f"{theirs}.0.SelfAttention.{n}", bias=False) for n in "qkvo"}
        if cfg["bias_per_layer"] or i == 0:
            attention["relative_bias"] = Tensor(
                f"{theirs}.0.SelfAttention.relative_attention_bias.weight"
            )
        out[f"block_{i}_attention"] = attention
        out[f"block_{i}_norm1"] = {"scale": Tensor(f"{theirs}.0.layer_norm.weight")}
        out[f"block_{i}_norm2"] = {"scale": Tensor(f"{theirs}.1.layer_norm.weight")}
        mlp = ("wi_0", "wi_1", "wo") if cfg["gated"] else ("wi", "wo")
        for n in mlp:
            out[f"block_{i}_mlp_{n}"] = linear(f"{theirs}.1.DenseReluDense.{n}", bias=False)
    return out
