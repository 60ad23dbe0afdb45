"""Flax linen models: VQ-VAE tokenizer and Diffusion Transformer generator."""

from crossmodal_jax.models.condition_stem import ConditionStem
from crossmodal_jax.models.dit import DIT_PRESETS, DiT, DiTBlock
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vqvae import VQVAE, latent_shape

__all__ = [
    "ConditionStem",
    "DIT_PRESETS",
    "VQVAE",
    "DiT",
    "DiTBlock",
    "TokenDiT",
    "VectorQuantizer",
    "latent_shape",
]
