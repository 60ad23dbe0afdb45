"""Flax linen models: VQ-VAE tokenizer and Diffusion Transformer generator."""

from crossmodal_jax.models.condition_stem import ConditionStem
from crossmodal_jax.models.conditioning import (
    CONDITIONINGS,
    CrossAttentionBlock,
    DiTBlock,
    MMDiTBlock,
)
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vqvae import VQVAE, latent_shape

__all__ = [
    "CONDITIONINGS",
    "ConditionStem",
    "CrossAttentionBlock",
    "DIT_PRESETS",
    "VQVAE",
    "DiT",
    "DiTBlock",
    "MMDiTBlock",
    "TokenDiT",
    "VectorQuantizer",
    "latent_shape",
]
