"""The tokenizer's quantizers, one table entry each (config `tokenizer.model.quantizer`).

Every quantizer is a linen module with the same contract, so the VQ-VAE, both diffusion
processes and the evaluation use any of them unchanged:

  __call__(z [..., code_dim], *, train) -> (quantized z, aux): aux["indices"] are the code ids
      (i32[...], or i32[..., N] for N residual stages), aux["loss"] what the tokenizer's
      objective adds, and float32 health scalars ("codebook_usage", "perplexity", "dead_codes",
      "restarts", plus the quantizer's own terms), logged as they are;
  lookup(ids) -> code vectors [..., code_dim]: the continuous latents of Gaussian and flow
      diffusion, and what X→text generators read;
  snap(latents) -> the nearest code vectors in `lookup`'s space (a generated latent's code);
  vocab_size: the ids' range (the masked process's vocabulary; its mask id is vocab_size).

A spec is the tokenizer config's quantizer keys (see `SPEC_KEYS`); `vocabulary_size` and
`codes_per_position` answer from the spec alone, so the generator is sized before any module
exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from crossmodal_jax.models.fsq import FiniteScalarQuantizer
from crossmodal_jax.models.lfq import MAX_BITS, LookupFreeQuantizer
from crossmodal_jax.models.rvq import ResidualQuantizer
from crossmodal_jax.models.vq import VectorQuantizer

Spec = Mapping[str, Any]


def _vq(s: Spec, dtype: jnp.dtype) -> nn.Module:
    return VectorQuantizer(
        num_codes=s["num_codes"],
        code_dim=s["code_dim"],
        decay=s["decay"],
        epsilon=s["epsilon"],
        commitment_cost=s["commitment_cost"],
        dead_code_threshold=s["dead_code_threshold"],
        cosine=s["cosine"],
        lookup_dim=s["lookup_dim"],
        codebook_init=s["codebook_init"],
        lookup_chunk_size=s["lookup_chunk_size"],
        rotation_trick=s["rotation_trick"],
        dtype=dtype,
    )


def _fsq(s: Spec, dtype: jnp.dtype) -> nn.Module:
    return FiniteScalarQuantizer(levels=tuple(s["levels"]), code_dim=s["code_dim"], dtype=dtype)


def _lfq(s: Spec, dtype: jnp.dtype) -> nn.Module:
    return LookupFreeQuantizer(
        code_dim=s["code_dim"],
        entropy_weight=s["entropy_weight"],
        diversity_gamma=s["diversity_gamma"],
        inv_temperature=s["inv_temperature"],
        commitment_cost=s["commitment_cost"],
        dtype=dtype,
    )


def _check_vq(s: Spec) -> str:
    return "" if s["num_codes"] >= 2 else f"num_codes={s['num_codes']} needs at least 2 codes"


def _check_fsq(s: Spec) -> str:
    levels = tuple(s["levels"])
    if not levels or min(levels) < 3:
        return f"levels={levels}: fsq needs one int >= 3 a dimension, e.g. (8, 5, 5, 5)"
    return ""


def _check_lfq(s: Spec) -> str:
    if not 1 <= s["code_dim"] <= MAX_BITS:
        return f"code_dim={s['code_dim']}: lfq codes are code_dim bits, 1 to {MAX_BITS}"
    return ""


@dataclass(frozen=True)
class QuantizerEntry:
    """One row of the table: how to build the module, its vocabulary, and its spec check."""

    build: Callable[[Spec, jnp.dtype], nn.Module]
    vocab: Callable[[Spec], int]
    check: Callable[[Spec], str]  # "" or what is wrong with the spec, in one line


# Single-stage quantizers; "rvq" stacks `residual_stages` of the one named `residual_quantizer`.
STAGES: dict[str, QuantizerEntry] = {
    "vq": QuantizerEntry(_vq, lambda s: int(s["num_codes"]), _check_vq),
    "fsq": QuantizerEntry(_fsq, lambda s: math.prod(s["levels"]), _check_fsq),
    "lfq": QuantizerEntry(_lfq, lambda s: 2 ** int(s["code_dim"]), _check_lfq),
}
QUANTIZERS = (*STAGES, "rvq")

# The tokenizer config keys a quantizer is built from (besides the VQ-VAE's own).
SPEC_KEYS = (
    "quantizer",
    "num_codes",
    "code_dim",
    "decay",
    "epsilon",
    "commitment_cost",
    "dead_code_threshold",
    "cosine",
    "lookup_dim",
    "codebook_init",
    "lookup_chunk_size",
    "rotation_trick",
    "levels",
    "entropy_weight",
    "diversity_gamma",
    "inv_temperature",
    "residual_quantizer",
    "residual_stages",
    "quantizer_dropout",
)


def _stage_kind(spec: Spec) -> str:
    return spec["residual_quantizer"] if spec["quantizer"] == "rvq" else spec["quantizer"]


def check_spec(spec: Spec) -> str:
    """ "" if the spec builds a quantizer, else one line naming the bad key and its value."""
    if spec["quantizer"] not in QUANTIZERS:
        return f"quantizer={spec['quantizer']!r}; expected one of {QUANTIZERS}"
    kind = _stage_kind(spec)
    if kind not in STAGES:
        return f"residual_quantizer={kind!r}; expected one of {tuple(STAGES)}"
    if spec["quantizer"] == "rvq":
        if spec["residual_stages"] < 1:
            return f"residual_stages={spec['residual_stages']}; rvq needs at least 1"
        if not 0.0 <= spec["quantizer_dropout"] < 1.0:
            return (
                f"quantizer_dropout={spec['quantizer_dropout']}; expected a probability in [0, 1)"
            )
    return STAGES[kind].check(spec)


def vocabulary_size(spec: Spec) -> int:
    """The code ids' range: codebook size, prod(levels) or 2^bits (one stage's, for rvq)."""
    return STAGES[_stage_kind(spec)].vocab(spec)


def codes_per_position(spec: Spec) -> int:
    """Ids a latent position has: the residual stages (1 for single-stage quantizers)."""
    return int(spec["residual_stages"]) if spec["quantizer"] == "rvq" else 1


def build_quantizer(spec: Spec, dtype: jnp.dtype = jnp.float32) -> nn.Module:
    """The quantizer module a spec describes (computing in `dtype`; statistics stay float32).
    Raises a one-line ValueError for a spec `check_spec` refuses."""
    problem = check_spec(spec)
    if problem:
        raise ValueError(problem)
    stage = STAGES[_stage_kind(spec)].build(spec, dtype)
    if spec["quantizer"] != "rvq":
        return stage
    return ResidualQuantizer(
        stage=stage, num_stages=spec["residual_stages"], dropout=spec["quantizer_dropout"]
    )
