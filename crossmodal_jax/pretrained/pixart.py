"""PixArt-α / PixArt-Σ (diffusers `PixArtTransformer2DModel` folders) as a pretrained kind: the
Flax module of pixart_model.py, every parameter a checkpoint tensor with its axes permuted.

Older PixArt-α folders name the class `Transformer2DModel`, diffusers' generic 2-D transformer
that its loader turns into a PixArtTransformer2DModel when the config says norm_type
"ada_norm_single" with patched inputs; those are read too, any other Transformer2DModel (DiT's
"ada_norm_zero", VQ-Diffusion's discrete inputs, plain "layer_norm") is refused in one line.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained.pixart_model import PixArtTransformer
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import Tensor, conv, linear

NAMES = ("PixArtTransformer2DModel", "Transformer2DModel")
# PatchEmbed's sin-cos table is a fixed buffer (recomputed for every input size); files saved
# before diffusers made it non-persistent still hold it.
IGNORE = (r"pos_embed\.pos_embed",)

# Each class's defaults for keys a config.json leaves out (diffusers fills them the same way).
_DEFAULTS = {
    "PixArtTransformer2DModel": {
        "num_attention_heads": 16,
        "attention_head_dim": 72,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 28,
        "cross_attention_dim": 1152,
        "attention_bias": True,
        "sample_size": 128,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "attention_type": "default",
    },
    "Transformer2DModel": {
        "num_attention_heads": 16,
        "attention_head_dim": 88,
        "in_channels": None,
        "out_channels": None,
        "num_layers": 1,
        "cross_attention_dim": None,
        "attention_bias": False,
        "sample_size": None,
        "patch_size": None,
        "activation_fn": "geglu",
        "norm_type": "layer_norm",
        "norm_elementwise_affine": True,
        "norm_eps": 1e-5,
        "attention_type": "default",
    },
}
# What this port implements, for the config keys whose other values change the maths.
_REQUIRED = {
    "norm_type": "ada_norm_single",
    "activation_fn": "gelu-approximate",
    "norm_elementwise_affine": False,
    "attention_type": "default",
    "only_cross_attention": False,
    "double_self_attention": False,
    "num_vector_embeds": None,
    "use_linear_projection": False,
}


def matches(ckpt: Checkpoint) -> bool:
    """Config-less files are not recognised: the head count is not in the tensors (and the
    original PixArt repository's `.pth` files use other names)."""
    return False


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    """PixArtTransformer kwargs from config.json, refusing what the module does not compute."""
    cfg = ckpt.config
    where = ckpt.path / "config.json"
    if not cfg:
        raise CheckpointError(f"{ckpt.path}: a PixArt checkpoint needs its config.json")
    cls = str(cfg.get("_class_name", "PixArtTransformer2DModel"))
    conf = _DEFAULTS.get(cls, _DEFAULTS["PixArtTransformer2DModel"]) | cfg
    if cls == "Transformer2DModel" and conf.get("norm_type") != "ada_norm_single":
        raise CheckpointError(
            f"{where}: a Transformer2DModel with norm_type {conf.get('norm_type')!r} is not "
            "PixArt (norm_type 'ada_norm_single'); only PixArt's Transformer2DModel is supported"
        )
    for key, want in _REQUIRED.items():
        if conf.get(key, want) != want:
            raise CheckpointError(
                f"{where}: {key}={conf[key]!r} is not supported (PixArt uses {want!r})"
            )
    for key in ("sample_size", "patch_size", "in_channels", "cross_attention_dim"):
        if not isinstance(conf.get(key), int) or isinstance(conf.get(key), bool):
            raise CheckpointError(f"{where}: {key}={conf.get(key)!r} is not supported (an int)")
    heads, head_dim = int(conf["num_attention_heads"]), int(conf["attention_head_dim"])
    inner = heads * head_dim
    caption = conf.get("caption_channels")
    if caption is not None and conf["cross_attention_dim"] != inner:
        # The caption projection outputs the inner dim; diffusers cannot run such a config either.
        raise CheckpointError(
            f"{where}: cross_attention_dim={conf['cross_attention_dim']!r} must equal "
            f"num_attention_heads * attention_head_dim = {inner} when caption_channels is set"
        )
    sample, patch = conf["sample_size"], conf["patch_size"]
    additional = conf.get("use_additional_conditions")
    if additional is None:  # diffusers' rule: PixArt-α 1024px (latent 128) has them
        additional = sample == 128
    if additional and inner % 3:
        raise CheckpointError(
            f"{where}: use_additional_conditions=True needs a hidden size divisible by 3, "
            f"got {inner}"
        )
    scale = conf.get("interpolation_scale")
    return {
        "num_heads": heads,
        "head_dim": head_dim,
        "in_channels": int(conf["in_channels"]),
        "out_channels": int(conf["out_channels"] or conf["in_channels"]),
        "num_layers": int(conf["num_layers"]),
        "patch_size": patch,
        "base_size": sample // patch,
        "interpolation_scale": float(scale if scale is not None else max(sample // 64, 1)),
        "caption_channels": None if caption is None else int(caption),
        "norm_eps": float(conf["norm_eps"]),
        "attention_bias": bool(conf["attention_bias"]),
        "use_additional_conditions": bool(additional),
        # Not module fields: what init_args needs.
        "sample_size": sample,
        "cross_attention_dim": int(conf["cross_attention_dim"]),
    }


_INIT_ONLY = ("sample_size", "cross_attention_dim")


def build(cfg: dict[str, Any]) -> PixArtTransformer:
    # The platform's attention kernel, as a config-built DiT (pretrained/dit.py says why).
    kwargs = {k: v for k, v in cfg.items() if k not in _INIT_ONLY}
    return PixArtTransformer(**{"attention": "auto", **kwargs})


def init_args(cfg: dict[str, Any]) -> tuple:
    """x [1, S, S, C], timestep [1], captions [1, 1, E], mask [1, 1] (+ resolution [1, 2] and
    aspect ratio [1, 1] when the model embeds them)."""
    s = cfg["sample_size"]
    caption = cfg["caption_channels"] or cfg["cross_attention_dim"]
    args = (
        jax.ShapeDtypeStruct((1, s, s, cfg["in_channels"]), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32),
        jax.ShapeDtypeStruct((1, 1, caption), jnp.float32),
        jax.ShapeDtypeStruct((1, 1), jnp.int32),
    )
    if cfg["use_additional_conditions"]:
        args += (
            jax.ShapeDtypeStruct((1, 2), jnp.float32),
            jax.ShapeDtypeStruct((1, 1), jnp.float32),
        )
    return args


def _timestep_embedder(prefix: str) -> dict[str, Any]:
    """diffusers TimestepEmbedding (linear_1, SiLU, linear_2) -> layers.TimestepEmbedder."""
    return {"fc1": linear(f"{prefix}.linear_1"), "fc2": linear(f"{prefix}.linear_2")}


def _attention(prefix: str, bias: bool) -> dict[str, Any]:
    out = {name: linear(f"{prefix}.{name}", bias) for name in ("to_q", "to_k", "to_v")}
    return out | {"to_out": linear(f"{prefix}.to_out.0")}


def _block(prefix: str, bias: bool) -> dict[str, Any]:
    return {
        "scale_shift_table": Tensor(f"{prefix}.scale_shift_table"),
        "attn1": _attention(f"{prefix}.attn1", bias),
        "attn2": _attention(f"{prefix}.attn2", bias),
        "ff": {"fc1": linear(f"{prefix}.ff.net.0.proj"), "fc2": linear(f"{prefix}.ff.net.2")},
    }


def recipe(cfg: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    """Every parameter is one checkpoint tensor, transposed at most (sliced reads on a mesh)."""
    emb = "adaln_single.emb"
    out: dict[str, Any] = {
        "patch_embed": conv("pos_embed.proj"),
        "t_embed": _timestep_embedder(f"{emb}.timestep_embedder"),
        "t_block": linear("adaln_single.linear"),
        "scale_shift_table": Tensor("scale_shift_table"),
        "proj_out": linear("proj_out"),
    }
    if cfg["use_additional_conditions"]:
        out["resolution_embed"] = _timestep_embedder(f"{emb}.resolution_embedder")
        out["aspect_ratio_embed"] = _timestep_embedder(f"{emb}.aspect_ratio_embedder")
    if cfg["caption_channels"] is not None:
        out["caption_fc1"] = linear("caption_projection.linear_1")
        out["caption_fc2"] = linear("caption_projection.linear_2")
    for i in range(cfg["num_layers"]):
        out[f"block_{i}"] = _block(f"transformer_blocks.{i}", cfg["attention_bias"])
    return out
