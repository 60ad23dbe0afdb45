"""DiT (facebookresearch/DiT `.pt` files and diffusers `DiTTransformer2DModel` folders) as a
pretrained kind: our `models.dit.DiT` with the weights `models/torch_convert.py` converts.

The conversion fuses/splits q, k, v and checks the per-block embedder copies on whole tensors,
so DiT parameters are read whole (≤ 675 M parameters for DiT-XL/2), not slice by slice.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models import torch_convert
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.pretrained.reader import Checkpoint

NAMES = ("DiTTransformer2DModel", "DiTTransformer2DModelFacebook")
# The conversion reads every tensor and itself refuses leftovers (torch_convert._Weights).
IGNORE = (r".*",)


def matches(ckpt: Checkpoint) -> bool:
    return "x_embedder.proj.weight" in ckpt and "y_embedder.embedding_table.weight" in ckpt


def _state_dict(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    return {name: ckpt.read(name) for name in ckpt.names()}


def _convert(ckpt: Checkpoint) -> tuple[dict, dict]:
    cached = getattr(ckpt, "_dit_converted", None)
    if cached is None:
        if ckpt.config:
            cached = torch_convert.convert_diffusers_state_dict(_state_dict(ckpt), ckpt.config)
        else:
            cached = torch_convert.convert_facebook_state_dict(
                _state_dict(ckpt), source=str(ckpt.path)
            )
        ckpt._dit_converted = cached
    return cached


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    return dict(_convert(ckpt)[1])


def build(cfg: dict[str, Any]) -> DiT:
    # The platform's attention kernel, as a config-built DiT (generator.model.attention="auto"):
    # on a CPU the einsum layout, which benchmarks/attention.py measures faster than XLA's.
    return DiT(**{"attention": "auto", **cfg})


def init_args(cfg: dict[str, Any]) -> tuple:
    h, w = cfg["input_size"]
    return (
        jax.ShapeDtypeStruct((1, h, w, cfg["in_channels"]), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
    )


def recipe(cfg: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    """Already-converted arrays: every tensor was read (and checked) by the conversion."""
    return _convert(ckpt)[0]
