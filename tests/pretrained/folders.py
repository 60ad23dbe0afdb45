"""Tiny random-weight pretrained parts for the tests: the package's own writers
(crossmodal_jax/pretrained/random_parts.py, which smoke configs use as `random:<kind>`)."""

from crossmodal_jax.pretrained.random_parts import tiny_t5, tiny_vae, tiny_vqgan

__all__ = ["tiny_t5", "tiny_vae", "tiny_vqgan"]
