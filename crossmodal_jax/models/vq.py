"""EMA vector quantizer (VQ-VAE-2 / Sonnet `VectorQuantizerEMA`) with dead-code restart.

The codebook is not trained by gradients: it lives in the variable collection "vq_stats"
(codebook [K, D], cluster_size [K], embed_sum [K, D]) and follows exponential moving averages of
the encoder outputs assigned to each code. The encoder is pulled towards its codes by the
commitment loss and receives the decoder's gradient through the straight-through estimator.

Under jit the batch is the global batch, so the plain sums below are already global statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.sharding import CODE_DIM, CODEBOOK

STATS = "vq_stats"


def nearest_codes(z_NxD: jax.Array, codebook_KxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the nearest code for each row and all squared L2 distances (float32).

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: one matmul instead of an [N, K, D] difference tensor.
    """
    z = z_NxD.astype(jnp.float32)
    e = codebook_KxD.astype(jnp.float32)
    dist_NxK = (
        jnp.sum(z**2, axis=1, keepdims=True)
        - 2.0 * jnp.matmul(z, e.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(e**2, axis=1)[None, :]
    )
    return jnp.argmin(dist_NxK, axis=1).astype(jnp.int32), dist_NxK


def straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """Forward value z_q, gradient of the identity with respect to z."""
    return z + jax.lax.stop_gradient(z_q - z)


def ema_update(
    cluster_size_K: jax.Array,
    embed_sum_KxD: jax.Array,
    z_NxD: jax.Array,
    onehot_NxK: jax.Array,
    *,
    decay: float,
    epsilon: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA step of the code statistics; returns (cluster_size, embed_sum, codebook).

    Laplace smoothing of the cluster sizes keeps codes with no assignments from dividing by zero
    while preserving the total count n.
    """
    z = z_NxD.astype(jnp.float32)
    onehot = onehot_NxK.astype(jnp.float32)
    cluster_size = decay * cluster_size_K + (1.0 - decay) * jnp.sum(onehot, axis=0)
    batch_sum_KxD = jnp.matmul(onehot.T, z, precision=jax.lax.Precision.HIGHEST)
    embed_sum = decay * embed_sum_KxD + (1.0 - decay) * batch_sum_KxD
    n = jnp.sum(cluster_size)
    num_codes = cluster_size.shape[0]
    smoothed = (cluster_size + epsilon) / (n + num_codes * epsilon) * n
    codebook = embed_sum / smoothed[:, None]
    return cluster_size, embed_sum, codebook


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
    """How often each code occurs in `indices` (any shape), float32 [K]."""
    return jnp.bincount(indices.reshape(-1), length=num_codes).astype(jnp.float32)


def codebook_usage(indices: jax.Array, num_codes: int) -> jax.Array:
    """Fraction of the K codes used at least once in `indices`."""
    return jnp.mean((code_counts(indices, num_codes) > 0).astype(jnp.float32))


def _perplexity_from_counts(counts_K: jax.Array) -> jax.Array:
    p = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
    # 0 * log 0 := 0; the where keeps log's argument positive.
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def codebook_perplexity(indices: jax.Array, num_codes: int) -> jax.Array:
    """exp(entropy) of the empirical code distribution: 1 (one code) .. K (uniform)."""
    return _perplexity_from_counts(code_counts(indices, num_codes))


def restart_dead_codes(
    key: jax.Array,
    cluster_size_K: jax.Array,
    embed_sum_KxD: jax.Array,
    codebook_KxD: jax.Array,
    z_NxD: jax.Array,
    *,
    threshold: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Replace codes with cluster_size < threshold by random encoder outputs of this batch.

    A revived code gets cluster_size max(threshold, 1) (so it counts as alive right after the
    restart) and a consistent embed_sum = code * cluster_size. Returns the new stats and the
    boolean dead mask.
    """
    num_codes = cluster_size_K.shape[0]
    dead_K = cluster_size_K < threshold
    pick_K = jax.random.randint(key, (num_codes,), 0, z_NxD.shape[0])
    new_codes_KxD = z_NxD.astype(jnp.float32)[pick_K]
    revived_size = max(float(threshold), 1.0)
    codebook = jnp.where(dead_K[:, None], new_codes_KxD, codebook_KxD)
    cluster_size = jnp.where(dead_K, revived_size, cluster_size_K)
    embed_sum = jnp.where(dead_K[:, None], new_codes_KxD * revived_size, embed_sum_KxD)
    return cluster_size, embed_sum, codebook, dead_K


class VectorQuantizer(nn.Module):
    """EMA vector quantizer over the last axis of its input.

    `__call__(z, train=...)` returns the straight-through quantized z and an aux dict with
    "indices" (int32, z.shape[:-1]) and float32 scalars "commitment_loss", "codebook_usage",
    "perplexity" (of this batch), "dead_codes" (codes below the threshold) and "restarts".
    With train=True and "vq_stats" mutable (not during init), the EMA stats are updated and dead
    codes restarted (rng stream "vq"); with train=False nothing changes.
    """

    num_codes: int
    code_dim: int
    decay: float = 0.99
    epsilon: float = 1e-5
    commitment_cost: float = 0.25
    dead_code_threshold: float = 0.0
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        k, d = self.num_codes, self.code_dim
        # fan_in = D (not K) so code norms match unit-variance encoder features.
        init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)

        def init_codebook():
            return init(self.make_rng("params"), (k, d), jnp.float32)

        self.codebook = self.variable(
            STATS, "codebook", nn.with_logical_partitioning(init_codebook, (CODEBOOK, CODE_DIM))
        )
        # Start as if each code had been seen once: smoothed size 1, so codebook = embed_sum.
        self.cluster_size = self.variable(
            STATS,
            "cluster_size",
            nn.with_logical_partitioning(lambda: jnp.ones((k,), jnp.float32), (CODEBOOK,)),
        )
        self.embed_sum = self.variable(
            STATS,
            "embed_sum",
            nn.with_logical_partitioning(lambda: self.codebook.value, (CODEBOOK, CODE_DIM)),
        )

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Codes for integer indices of any shape: [...] -> [..., D] (compute dtype)."""
        return jnp.take(self.codebook.value, indices, axis=0).astype(self.dtype)

    def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"expected last axis {self.code_dim}, got shape {z.shape}")
        lead_shape = z.shape[:-1]
        z_NxD = jax.lax.stop_gradient(z).reshape(-1, self.code_dim).astype(jnp.float32)
        codebook_KxD = self.codebook.value
        indices_N, _ = nearest_codes(z_NxD, codebook_KxD)
        z_q = codebook_KxD[indices_N].reshape(z.shape)

        z_f32 = z.astype(jnp.float32)
        commitment = self.commitment_cost * jnp.mean((z_f32 - jax.lax.stop_gradient(z_q)) ** 2)
        counts_K = code_counts(indices_N, self.num_codes)

        cluster_size_K = self.cluster_size.value
        restarts = jnp.zeros((), jnp.float32)
        update = train and self.is_mutable_collection(STATS) and not self.is_initializing()
        if update:
            onehot_NxK = jax.nn.one_hot(indices_N, self.num_codes, dtype=jnp.float32)
            cluster_size_K, embed_sum, codebook = ema_update(
                cluster_size_K,
                self.embed_sum.value,
                z_NxD,
                onehot_NxK,
                decay=self.decay,
                epsilon=self.epsilon,
            )
            if self.dead_code_threshold > 0:
                cluster_size_K, embed_sum, codebook, dead_K = restart_dead_codes(
                    self.make_rng("vq"),
                    cluster_size_K,
                    embed_sum,
                    codebook,
                    z_NxD,
                    threshold=self.dead_code_threshold,
                )
                restarts = jnp.sum(dead_K).astype(jnp.float32)
            self.cluster_size.value = cluster_size_K
            self.embed_sum.value = embed_sum
            self.codebook.value = codebook

        if update:
            dead = restarts  # the codes that fell below the threshold were just restarted
        elif self.dead_code_threshold > 0:
            dead = jnp.sum(cluster_size_K < self.dead_code_threshold).astype(jnp.float32)
        else:
            dead = jnp.zeros((), jnp.float32)

        aux = {
            "indices": indices_N.reshape(lead_shape),
            "commitment_loss": commitment,
            "codebook_usage": jnp.mean((counts_K > 0).astype(jnp.float32)),
            "perplexity": _perplexity_from_counts(counts_K),
            "dead_codes": dead,
            "restarts": restarts,
        }
        z_q_st = straight_through(z_f32, z_q).astype(z.dtype)
        return z_q_st, aux
