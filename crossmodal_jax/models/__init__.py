"""Flax linen models: VQ-VAE tokenizer and Diffusion Transformer generator."""

from crossmodal_jax.models.condition_stem import ConditionStem
from crossmodal_jax.models.conditioning import (
    CONDITIONINGS,
    CrossAttentionBlock,
    DiTBlock,
    MMDiTBlock,
)
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.models.fsq import FiniteScalarQuantizer
from crossmodal_jax.models.lfq import LookupFreeQuantizer
from crossmodal_jax.models.quantizers import QUANTIZERS, build_quantizer
from crossmodal_jax.models.rvq import ResidualQuantizer
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.models.vq import VectorQuantizer
from crossmodal_jax.models.vqvae import VQVAE, latent_shape, vqvae_from_config

__all__ = [
    "CONDITIONINGS",
    "ConditionStem",
    "CrossAttentionBlock",
    "DIT_PRESETS",
    "VQVAE",
    "DiT",
    "DiTBlock",
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "MMDiTBlock",
    "QUANTIZERS",
    "ResidualQuantizer",
    "TokenDiT",
    "VectorQuantizer",
    "build_quantizer",
    "latent_shape",
    "vqvae_from_config",
]
