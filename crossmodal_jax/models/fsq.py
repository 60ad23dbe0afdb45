"""Finite scalar quantization (Mentzer et al. 2023, "FSQ: VQ-VAE made simple").

Each of the d = len(levels) code dimensions is bounded by a shifted tanh and rounded to one of
levels[i] values in [-1, 1]; the codebook is implicit (the product grid, prod(levels) codes), so
there is nothing to learn, to restart or to synchronise across devices, and no auxiliary loss.
The maths follows the paper's JAX reference (Appendix A.1) as vector-quantize-pytorch's `FSQ`
does (its default, non-symmetric variant), so ids and outputs equal the peer's
(tests/models/test_quantizers.py). An encoder width other than d is projected in and out by
learned Dense layers, as the peer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models.layers import dense
from crossmodal_jax.models.vq_ops import (
    code_counts,
    nearest_code,
    perplexity_from_counts,
    straight_through,
)
from crossmodal_jax.training.sharding import CODE_DIM


def _levels(levels: Sequence[int]) -> jax.Array:
    return jnp.asarray(levels, jnp.float32)


def _basis(levels: Sequence[int]) -> jax.Array:
    """Mixed-radix place values: id = sum(digit_i * prod(levels[:i]))."""
    return jnp.asarray(np.cumprod([1, *levels[:-1]]), jnp.int32)


def fsq_bound(z: jax.Array, levels: Sequence[int], eps: float = 1e-3) -> jax.Array:
    """Squash z [..., d] so that rounding gives levels[i] values per dimension (offset by 1/2
    for even levels, whose grid has no zero)."""
    lv = _levels(levels)
    half_l = (lv - 1.0) * (1.0 + eps) / 2.0
    offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half_l)
    return jnp.tanh(z + shift) * half_l - offset


def fsq_quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Codes in [-1, 1] [..., d] (float32), straight-through through the rounding."""
    bounded = fsq_bound(z.astype(jnp.float32), levels)
    half_width = jnp.asarray(levels, jnp.int32) // 2
    return straight_through(bounded, jnp.round(bounded)) / half_width


def fsq_codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Ids i32[...] of codes [..., d] on the grid."""
    half_width = jnp.asarray(levels, jnp.int32) // 2
    digits = codes * half_width + half_width
    return jnp.round(jnp.sum(digits * _basis(levels), axis=-1)).astype(jnp.int32)


def fsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Codes f32[..., d] of ids [...]: the inverse of `fsq_codes_to_indices`."""
    lv = jnp.asarray(levels, jnp.int32)
    digits = (indices[..., None] // _basis(levels)) % lv
    half_width = lv // 2
    return ((digits - half_width) / half_width).astype(jnp.float32)


class FiniteScalarQuantizer(nn.Module):
    """FSQ over the last axis; same call and aux contract as `VectorQuantizer`.

    aux: "indices" i32[...], "loss" (0: FSQ needs none), "codebook_usage" and "perplexity" of
    this batch over the prod(levels) implicit codes, "dead_codes" and "restarts" (0: none exist).
    """

    levels: tuple[int, ...]
    code_dim: int
    dtype: jnp.dtype = jnp.float32

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def residual_gain(self) -> jax.Array | float:
        """How much finer the next residual stage's grid is (ResidualFSQ's levels - 1 a dimension);
        1 when the grid lives behind a projection (no fixed scale there)."""
        return 1.0 if self.projected else jnp.asarray(self.levels, jnp.float32) - 1.0

    @property
    def projected(self) -> bool:
        return self.code_dim != len(self.levels)

    def setup(self):
        if not self.levels or min(self.levels) < 3:
            # Level 2 would round tanh's bound to {-1, 0, 1}'s middle, never used: the peer
            # refuses it too (without its symmetry-preserving variant).
            raise ValueError(
                f"fsq levels must be a non-empty tuple of ints >= 3, got {self.levels}"
            )
        if self.projected:
            self.project_in = dense(len(self.levels), (CODE_DIM, None), dtype=self.dtype)
            self.project_out = dense(self.code_dim, (None, CODE_DIM), dtype=self.dtype)

    def snap(self, z: jax.Array) -> jax.Array:
        """The code vector nearest to each latent z [..., code_dim], z in the space `lookup`
        returns (a generated latent): the nearest grid point, or with projections the nearest of
        the prod(levels) projected codes. Not the forward pass: projecting in again and bounding
        by tanh would not return a latent's own code."""
        if self.projected:
            codes = self.lookup(jnp.arange(self.vocab_size))
            flat = z.reshape(-1, self.code_dim)
            ids, _ = nearest_code(flat, codes)
            return codes[ids].reshape(z.shape).astype(z.dtype)
        half_width = jnp.asarray(self.levels, jnp.float32) // 2
        upper = jnp.asarray(self.levels, jnp.float32) - 1 - half_width  # even levels: L/2 - 1
        steps = jnp.clip(jnp.round(z.astype(jnp.float32) * half_width), -half_width, upper)
        return (steps / half_width).astype(z.dtype)

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Code vectors [..., code_dim] (compute dtype) of ids [...]."""
        codes = fsq_indices_to_codes(indices, self.levels)
        if self.projected:
            codes = self.project_out(codes.astype(self.dtype))
        return codes.astype(self.dtype)

    def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        del train  # nothing to update
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"expected last axis {self.code_dim}, got shape {z.shape}")
        h = self.project_in(z.astype(self.dtype)) if self.projected else z
        codes = fsq_quantize(h, self.levels)  # float32 whatever the model's dtype
        indices = fsq_codes_to_indices(jax.lax.stop_gradient(codes), self.levels)
        out = self.project_out(codes.astype(self.dtype)) if self.projected else codes
        counts = code_counts(indices, self.vocab_size)
        zero = jnp.zeros((), jnp.float32)
        aux = {
            "indices": indices,
            "loss": zero,
            "codebook_usage": jnp.mean((counts > 0).astype(jnp.float32)),
            "perplexity": perplexity_from_counts(counts),
            "dead_codes": zero,
            "restarts": zero,
        }
        return out.astype(z.dtype), aux
