"""Flax linen models: VQ-VAE tokenizer and Diffusion Transformer generator."""

from crossmodal_jax.models.condition_stem import ConditionStem
from crossmodal_jax.models.dit import DIT_PRESETS, DiT, DiTBlock
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vqvae import VQVAE, latent_shape

# Explicit registry: configs pick models by name, never via getattr on strings.
MODELS = {"vqvae": VQVAE, "dit": DiT, "token_dit": TokenDiT}

__all__ = [
    "ConditionStem",
    "DIT_PRESETS",
    "MODELS",
    "VQVAE",
    "DiT",
    "DiTBlock",
    "TokenDiT",
    "VectorQuantizer",
    "latent_shape",
]
