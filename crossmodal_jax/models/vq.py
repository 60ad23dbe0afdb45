"""EMA vector quantizer (VQ-VAE-2 / Sonnet `VectorQuantizerEMA`) with dead-code restart.

The codebook is not trained by gradients: it lives in the variable collection "vq_stats"
(codebook [K, D], cluster_size [K], embed_sum [K, D], plus an `initialized` flag when the
codebook is seeded from data) and follows exponential moving averages of the encoder outputs
assigned to each code. The encoder is pulled towards its codes by the commitment loss and
receives the decoder's gradient through the straight-through estimator.

Under jit the batch is the global batch (GSPMD splits it over the data axes and inserts the
all-reduce for every batch sum), so the EMA statistics, restarts and data-dependent seeding are
global and bitwise identical on every replica, as long as the "vq" rng is the same everywhere
(the training step passes fold_in(run key, step)). No explicit psum is needed. The maths is in vq_ops.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.layers import dense
from crossmodal_jax.models.vq_ops import (
    assignment_sums,
    code_counts,
    codebook_perplexity,
    codebook_usage,
    dead_code_count,
    ema_step,
    ema_update,
    kmeans_plus_plus,
    l2_normalize,
    nearest_codes,
    nearest_codes_chunked,
    perplexity_from_counts,
    restart_dead_codes,
    rotation_trick,
    sample_rows,
    straight_through,
)
from crossmodal_jax.training.sharding import CODE_DIM, CODEBOOK

__all__ = [
    "STATS",
    "VectorQuantizer",
    "code_counts",
    "codebook_perplexity",
    "codebook_usage",
    "dead_code_count",
    "ema_update",
    "nearest_codes",
    "nearest_codes_chunked",
    "restart_dead_codes",
    "straight_through",
]

STATS = "vq_stats"
INITS = ("random", "batch", "kmeans++")


class VectorQuantizer(nn.Module):
    """EMA vector quantizer over the last axis of its input.

    `__call__(z, train=...)` returns the straight-through quantized z and an aux dict with
    "indices" (int32, z.shape[:-1]) and float32 scalars "commitment_loss", "codebook_usage",
    "perplexity" (of this batch), "dead_codes" (codes below the threshold) and "restarts".
    With train=True and "vq_stats" mutable (not during init), the EMA stats are updated and dead
    codes restarted (rng stream "vq"); with train=False nothing changes.

    Options (all off by default = the plain VQ-VAE-2 quantizer):
      cosine: l2-normalise inputs and codes for the lookup; codes stay unit-norm (ViT-VQGAN).
      lookup_dim: > 0 projects z to this dim (learned Dense) for the lookup and back up after;
        the codebook [K, lookup_dim] lives in the low dim (ViT-VQGAN factorized codes).
      codebook_init: "random" (variance-scaled), or seed the codebook from the first train=True batch:
        "batch" (K distinct encodings) or "kmeans++" (D^2 seeding); key from the "vq" rng.
      rotation_trick: the decoder's gradient reaches z through the rotation taking z onto its
        code (Fifty et al. 2024; vq_ops.rotation_trick) instead of the straight-through identity.
      lookup_chunk_size: > 0 scans the codebook in chunks of this many codes (running argmin) so
        the lookup needs N * chunk * 4 B of distances instead of N * K * 4 B (see vq_ops).
    Distances and all statistics are float32 even when dtype is bfloat16.
    """

    num_codes: int
    code_dim: int
    decay: float = 0.99
    epsilon: float = 1e-5
    commitment_cost: float = 0.25
    dead_code_threshold: float = 0.0
    cosine: bool = False
    lookup_dim: int = 0
    codebook_init: str = "random"
    lookup_chunk_size: int = 0
    rotation_trick: bool = False
    dtype: jnp.dtype = jnp.float32

    residual_gain = 1.0  # residual stages keep the scale: each learns its own codebook

    @property
    def vocab_size(self) -> int:
        return self.num_codes

    @property
    def book_dim(self) -> int:
        return self.lookup_dim if self.lookup_dim > 0 else self.code_dim

    def setup(self):
        if self.codebook_init not in INITS:
            raise ValueError(
                f"unknown codebook init {self.codebook_init!r}; expected one of {INITS}"
            )
        k, d = self.num_codes, self.book_dim
        # fan_in = D (not K) so code norms match unit-variance encoder features.
        init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)

        def init_codebook():
            codes = init(self.make_rng("params"), (k, d), jnp.float32)
            return l2_normalize(codes) if self.cosine else codes

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
        if self.codebook_init != "random":
            self.initialized = self.variable(STATS, "initialized", lambda: jnp.zeros((), jnp.int32))
        if self.lookup_dim > 0:
            self.proj_down = dense(self.lookup_dim, (CODE_DIM, None), dtype=self.dtype)
            self.proj_up = dense(self.code_dim, (None, CODE_DIM), dtype=self.dtype)

    def _to_lookup_space(self, z: jax.Array) -> jax.Array:
        """Encoder output [..., code_dim] -> f32 vectors the codebook is compared with."""
        if self.lookup_dim > 0:
            z = self.proj_down(z.astype(self.dtype))
        return l2_normalize(z) if self.cosine else z.astype(jnp.float32)

    def _from_lookup_space(self, z_q: jax.Array) -> jax.Array:
        if self.lookup_dim > 0:
            return self.proj_up(z_q.astype(self.dtype))
        return z_q

    def snap(self, z: jax.Array) -> jax.Array:
        """The code vector nearest to each latent z [..., code_dim] (its quantization)."""
        return self(z, train=False)[0]

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Codes for integer indices of any shape: [...] -> [..., code_dim] (compute dtype)."""
        codes = jnp.take(self.codebook.value, indices, axis=0)
        return self._from_lookup_space(codes).astype(self.dtype)

    def _seed_codebook(self, z_NxD: jax.Array) -> None:
        """On the first update, replace the random codebook by one drawn from this batch."""

        key = self.make_rng("vq")  # drawn outside cond: the rng stream advances the same way

        def seed(_):
            if self.codebook_init == "kmeans++":
                codes = kmeans_plus_plus(key, z_NxD, self.num_codes)
            else:
                codes = sample_rows(key, z_NxD, self.num_codes)
            return l2_normalize(codes) if self.cosine else codes

        current = self.codebook.value
        # cond, not where: k-means++ costs K sequential passes over the batch, run it once.
        codebook = jax.lax.cond(self.initialized.value > 0, lambda _: current, seed, None)
        fresh = self.initialized.value == 0
        self.codebook.value = codebook
        self.cluster_size.value = jnp.where(fresh, 1.0, self.cluster_size.value)
        self.embed_sum.value = jnp.where(fresh, codebook, self.embed_sum.value)
        self.initialized.value = jnp.ones((), jnp.int32)

    def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"expected last axis {self.code_dim}, got shape {z.shape}")
        lead_shape = z.shape[:-1]
        z_l = self._to_lookup_space(z).reshape(-1, self.book_dim)  # f32, differentiable
        z_NxD = jax.lax.stop_gradient(z_l)
        update = train and self.is_mutable_collection(STATS) and not self.is_initializing()
        if update and self.codebook_init != "random":
            self._seed_codebook(z_NxD)

        codebook_KxD = self.codebook.value
        indices_N, _ = nearest_codes_chunked(z_NxD, codebook_KxD, self.lookup_chunk_size)
        z_q = codebook_KxD[indices_N]
        commitment = self.commitment_cost * jnp.mean((z_l - jax.lax.stop_gradient(z_q)) ** 2)
        counts_K, sums_KxD = assignment_sums(z_NxD, indices_N, self.num_codes)

        cluster_size_K = self.cluster_size.value
        restarts = jnp.zeros((), jnp.float32)
        if update:
            cluster_size_K, embed_sum, codebook = ema_step(
                cluster_size_K,
                self.embed_sum.value,
                counts_K,
                sums_KxD,
                decay=self.decay,
                epsilon=self.epsilon,
                cosine=self.cosine,
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
        else:
            dead = dead_code_count(cluster_size_K, self.dead_code_threshold)

        aux = {
            "indices": indices_N.reshape(lead_shape),
            "loss": commitment,  # what the tokenizer's objective adds
            "commitment_loss": commitment,
            "codebook_usage": jnp.mean((counts_K > 0).astype(jnp.float32)),
            "perplexity": perplexity_from_counts(counts_K),
            "dead_codes": dead,
            "restarts": restarts,
        }
        gradient_path = rotation_trick if self.rotation_trick else straight_through
        z_q_st = gradient_path(z_l, z_q).reshape(*lead_shape, self.book_dim)
        return self._from_lookup_space(z_q_st).astype(z.dtype), aux
