"""Lookup-free quantization (MAGVIT-v2, Yu et al. 2023).

Each of the d code dimensions is quantized to its sign (±scale), so the codebook is implicit:
the 2^d corners of a cube, id = the bits read most significant first (vector-quantize-pytorch's
`LFQ` order). Nothing is looked up or learned; what keeps the codes in use is the entropy term

    per-sample entropy - diversity_gamma * entropy of the batch-mean distribution,

over q(code | z) = softmax(2 * inv_temperature * z·code): each z should sit confidently near one
corner, and the batch should spread over all of them. Both entropies are computed in float32
whatever the model's dtype (the peer's users hit NaN in them under fp16), and the batch mean is
over the global batch under jit (GSPMD inserts the all-reduce), so it is the same on every
device. The terms equal the peer's (tests/models/test_quantizers.py). The per-sample
distribution has 2^d entries a position, so d stays small (config validation: d <= 16).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.vq_ops import code_counts, perplexity_from_counts, straight_through

MAX_BITS = 16  # 2^16 probabilities a position in the entropy term


def _bit_values(bits: int) -> jax.Array:
    """2^(d-1), ..., 2, 1: the most significant bit first."""
    return 2 ** jnp.arange(bits - 1, -1, -1, dtype=jnp.int32)


def lfq_codes_to_indices(codes: jax.Array) -> jax.Array:
    """Ids i32[...] of sign codes [..., d]."""
    return jnp.sum((codes > 0).astype(jnp.int32) * _bit_values(codes.shape[-1]), axis=-1)


def lfq_indices_to_codes(indices: jax.Array, bits: int, scale: float = 1.0) -> jax.Array:
    """Codes f32[..., d] in {-scale, scale} of ids [...]."""
    on = (indices[..., None] & _bit_values(bits)) != 0
    return jnp.where(on, scale, -scale).astype(jnp.float32)


def _entropy(p: jax.Array, eps: float = 1e-5) -> jax.Array:
    # The peer's clamp: a probability below eps counts as eps inside the log.
    return -jnp.sum(p * jnp.log(jnp.maximum(p, eps)), axis=-1)


def lfq_entropy_terms(
    z_NxD: jax.Array, *, inv_temperature: float, scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """(mean per-sample entropy, entropy of the mean distribution) of q(code | z), float32.

    q(code | z) = softmax over the 2^d corners of 2 * inv_temperature * z·code factorises over
    the bits: bit i is on with probability sigmoid(a_i), a = 4 * inv_temperature * scale * z. So
    the per-sample entropy is the sum of d Bernoulli entropies (O(N d) instead of O(N 2^d)), and
    log q(code | z) one matmul of the bits' log-probabilities; only the batch mean needs the
    N x 2^d probabilities. Log-sigmoids keep it stable where the softmax would need a clamp; it
    equals the peer's clamped softmax form to ~1e-4 where the clamp matters (q < 1e-5).
    """
    z = z_NxD.astype(jnp.float32)
    bits = z.shape[-1]
    a = 4.0 * inv_temperature * scale * z
    log_on, log_off = jax.nn.log_sigmoid(a), jax.nn.log_sigmoid(-a)
    on = jnp.exp(log_on)
    per_sample = -jnp.sum(on * log_on + (1.0 - on) * log_off, axis=-1)
    bits_KxD = (lfq_indices_to_codes(jnp.arange(2**bits), bits) > 0).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    log_q = jnp.matmul(log_on, bits_KxD.T, precision=hi) + jnp.matmul(
        log_off, 1.0 - bits_KxD.T, precision=hi
    )
    return jnp.mean(per_sample), _entropy(jnp.mean(jnp.exp(log_q), axis=0))


class LookupFreeQuantizer(nn.Module):
    """LFQ over the last axis (code_dim bits); same call and aux contract as `VectorQuantizer`.

    aux: "indices", "loss" (entropy_weight * entropy term + commitment_cost * commitment, in
    training; the commitment alone otherwise), "commitment_loss", "entropy_loss" (the weighted
    term), "per_sample_entropy", "codebook_entropy", "codebook_usage" and "perplexity" over the
    2^d implicit codes, "dead_codes" and "restarts" (0: none exist).
    """

    code_dim: int
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    inv_temperature: float = 100.0
    commitment_cost: float = 0.25
    scale: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @property
    def vocab_size(self) -> int:
        return 2**self.code_dim

    # Each residual stage halves the cube (ResidualLFQ's codebook scale 2^-i).
    residual_gain = 2.0

    def snap(self, z: jax.Array) -> jax.Array:
        """The nearest corner of the cube to each latent: the signs."""
        return jnp.where(z > 0, self.scale, -self.scale).astype(z.dtype)

    def lookup(self, indices: jax.Array) -> jax.Array:
        return lfq_indices_to_codes(indices, self.code_dim, self.scale).astype(self.dtype)

    def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        if not 1 <= z.shape[-1] <= MAX_BITS or z.shape[-1] != self.code_dim:
            raise ValueError(
                f"lfq needs code_dim between 1 and {MAX_BITS} bits, got input shape {z.shape} "
                f"for code_dim={self.code_dim}"
            )
        x = z.astype(jnp.float32)
        q = jnp.where(x > 0, self.scale, -self.scale)
        indices = lfq_codes_to_indices(q)
        commitment = jnp.mean((x - q) ** 2)
        zero = jnp.zeros((), jnp.float32)
        per_sample, codebook = zero, zero
        if train:
            per_sample, codebook = lfq_entropy_terms(
                x.reshape(-1, self.code_dim), inv_temperature=self.inv_temperature, scale=self.scale
            )
        entropy_loss = self.entropy_weight * (per_sample - self.diversity_gamma * codebook)
        counts = code_counts(indices, self.vocab_size)
        aux = {
            "indices": indices,
            "loss": entropy_loss + self.commitment_cost * commitment,
            "commitment_loss": self.commitment_cost * commitment,
            "entropy_loss": entropy_loss,
            "per_sample_entropy": per_sample,
            "codebook_entropy": codebook,
            "codebook_usage": jnp.mean((counts > 0).astype(jnp.float32)),
            "perplexity": perplexity_from_counts(counts),
            "dead_codes": zero,
            "restarts": zero,
        }
        return straight_through(x, q).astype(z.dtype), aux
