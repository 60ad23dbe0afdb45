"""crossmodal_jax: VQ tokenizers and Diffusion Transformers for cross-modal generation in JAX/Flax."""

__version__ = "0.1.0"
