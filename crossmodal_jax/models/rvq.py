"""Residual quantization (SoundStream, Zeghidour et al. 2021): N stages of any quantizer.

Stage i quantizes what the stages before it left over, r_i = z - sum_{j<i} q_j, so a position
is described by N ids (i32[..., N]) from N codebooks of the same size, and its code vector is
the sum of the N stages' vectors. With quantizer dropout, a training step keeps only the first
n ~ U{1..N} stages in the output (one n for the whole global batch, from the step's "vq" key,
so every device agrees), which teaches the decoder to read coarse prefixes. Every stage is
still computed and updated: its residual does not depend on the dropout.

Stages of FSQ and LFQ quantize the residual scaled up by their `residual_gain`^i (the grid of
each stage is that much finer, as vector-quantize-pytorch's ResidualFSQ / ResidualLFQ scale
theirs); VQ stages learn their own codebook scale. The gradient reaches z by one straight-through
estimator over the summed output (SoundStream's), whatever the stages' own estimators; each
stage's commitment pulls its residual towards its code.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.vq_ops import nearest_code, straight_through

EXACT_SNAP = 4096  # `snap` searches all sums of stage codes up to this many
# Per-stage health metrics averaged over the stages; the others are summed.
MEAN_OVER_STAGES = ("codebook_usage", "perplexity", "per_sample_entropy", "codebook_entropy")


class ResidualQuantizer(nn.Module):
    """N residual stages cloned from `stage` (a VectorQuantizer, FiniteScalarQuantizer or
    LookupFreeQuantizer template). Same call and aux contract as `VectorQuantizer`, with
    "indices" i32[..., N]; usage and perplexity are the stages' means, losses their sums."""

    stage: nn.Module
    num_stages: int = 2
    dropout: float = 0.0  # probability that a training step drops a random suffix of stages

    @property
    def vocab_size(self) -> int:
        return self.stage.vocab_size

    def setup(self):
        if self.num_stages < 1:
            raise ValueError(f"rvq needs at least 1 stage, got {self.num_stages}")
        self.stages = [self.stage.clone(parent=None) for _ in range(self.num_stages)]

    def _gain(self, i: int) -> jax.Array | float:
        return self.stage.residual_gain**i

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Summed code vectors [..., code_dim] of ids [..., N]."""
        return sum(q.lookup(indices[..., i]) / self._gain(i) for i, q in enumerate(self.stages))

    def snap(self, z: jax.Array) -> jax.Array:
        """The summed code vector nearest to each latent z [..., code_dim]: exactly, over all
        vocab_size^N sums while there are at most EXACT_SNAP of them; else greedily, each stage
        snapping what the stages before it left (the tokenizer's own encoding of z, which need
        not return a sum's own ids: a later stage's code can move the first stage's choice)."""
        if self.vocab_size**self.num_stages <= EXACT_SNAP:
            axes = jnp.meshgrid(*[jnp.arange(self.vocab_size)] * self.num_stages, indexing="ij")
            sums = self.lookup(jnp.stack(axes, axis=-1).reshape(-1, self.num_stages))
            ids, _ = nearest_code(z.reshape(-1, z.shape[-1]), sums)
            return sums[ids].reshape(z.shape).astype(z.dtype)
        residual = z.astype(jnp.float32)
        total = jnp.zeros_like(residual)
        for i, q in enumerate(self.stages):
            gain = self._gain(i)
            q_i = q.snap(residual * gain).astype(jnp.float32) / gain
            residual, total = residual - q_i, total + q_i
        return total.astype(z.dtype)

    def _active_stages(self, train: bool) -> jax.Array:
        """How many stages the output keeps this step (all, unless dropout fires)."""
        n = self.num_stages
        if not (train and self.dropout > 0 and n > 1) or self.is_initializing():
            return jnp.asarray(n)
        drop_key, n_key = jax.random.split(self.make_rng("vq"))
        fire = jax.random.bernoulli(drop_key, self.dropout)
        return jnp.where(fire, jax.random.randint(n_key, (), 1, n + 1), n)

    def __call__(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
        x = z.astype(jnp.float32)
        residual = x
        total = jnp.zeros_like(x)
        active = self._active_stages(train)
        indices, stage_aux = [], []
        for i, q in enumerate(self.stages):
            gain = self._gain(i)
            q_i, aux_i = q(residual * gain, train=train)
            q_i = jax.lax.stop_gradient(q_i.astype(jnp.float32)) / gain
            # The commitment of stage i pulls r_i (hence z) towards its code; r_i's earlier
            # codes are constants, as in every residual quantizer.
            residual = residual - q_i
            total = total + jnp.where(i < active, q_i, 0.0)
            indices.append(aux_i["indices"])
            stage_aux.append(aux_i)
        aux = {"indices": jnp.stack(indices, axis=-1)}
        for key in stage_aux[0]:
            if key == "indices":
                continue
            values = jnp.stack([a[key] for a in stage_aux])
            aux[key] = jnp.mean(values) if key in MEAN_OVER_STAGES else jnp.sum(values)
        aux["active_stages"] = active.astype(jnp.float32)
        return straight_through(x, total).astype(z.dtype), aux
