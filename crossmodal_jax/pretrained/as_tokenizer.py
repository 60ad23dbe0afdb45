"""A pretrained VQGAN or VAE behind our VQ-VAE's interface, so a run's generator, sampler and
evaluation use it exactly as they use a tokenizer trained here (`tokenizer_from` a checkpoint).

The methods are `models.vqvae.VQVAE`'s: `tokenize` (latents and code ids), `decode`, `snap`,
`lookup`, `decode_indices`, `encode`, and `__call__` (a reconstruction); the parameters are the
part's, under "inner". What the latents are:
- VQGAN: the quantized latents (codebook vectors); the code ids feed the masked process;
- VAE: the posterior mean scaled as the latent-diffusion recipe does, (mean - shift_factor) *
  scaling_factor, so Gaussian and flow diffusion see roughly unit variance; `decode` undoes the
  scaling. A VAE has no codebook: `vocab_size` is 0, its code ids are all 0, and the masked
  process refuses it (config validation).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.errors import UserError
from crossmodal_jax.pretrained import autoencoder
from crossmodal_jax.pretrained.vqgan import nearest_codes


class PretrainedTokenizer(nn.Module):
    inner: nn.Module  # the port's module: vqgan.VQGAN or vae.AutoencoderKL
    kind: str  # "vqgan" | "vae"
    code_dim: int  # latent channels
    num_codes: int = 0  # the VQGAN's codebook size; 0 for a VAE
    scaling_factor: float = 1.0  # VAE latents: (mean - shift_factor) * scaling_factor
    shift_factor: float = 0.0
    dead_code_threshold: float = 0.0  # no EMA statistics: nothing is ever "dead" by them

    @property
    def vocab_size(self) -> int:
        return self.num_codes

    @property
    def code_depth(self) -> int:
        return 1

    def encode(self, x: jax.Array) -> jax.Array:
        """Continuous latents before any codebook: VQGAN's after quant_conv; the VAE's scaled
        posterior mean."""
        if self.kind == "vqgan":
            return self.inner.latents(x)
        return (self.inner.encode(x) - self.shift_factor) * self.scaling_factor

    def tokenize(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(latents [B, h, w, code_dim], code ids [B, h, w])."""
        z = self.encode(x)
        if self.kind != "vqgan":
            return z, jnp.zeros(z.shape[:-1], jnp.int32)
        ids = nearest_codes(z, self.inner.codebook)
        return self.inner.embed_codes(ids), ids

    def snap(self, z: jax.Array) -> jax.Array:
        """Generated latents moved to the nearest code vectors (a VAE's are left as they are)."""
        if self.kind != "vqgan":
            return z
        return self.inner.embed_codes(nearest_codes(z, self.inner.codebook))

    def decode(self, z: jax.Array) -> jax.Array:
        if self.kind != "vqgan":
            z = z / self.scaling_factor + self.shift_factor
        return self.inner.decode(z)

    def lookup(self, ids: jax.Array) -> jax.Array:
        return self.inner.embed_codes(ids)

    def decode_indices(self, ids: jax.Array) -> jax.Array:
        return self.inner.decode_codes(ids)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        z, ids = self.tokenize(x)
        return self.decode(z), {"indices": ids}


def as_tokenizer(part) -> tuple[PretrainedTokenizer, dict[str, Any]]:
    """(the module, its variables) of a loaded `vqgan` or `vae` part."""
    s = part.config
    if part.kind == "vqgan":
        module = PretrainedTokenizer(
            part.module, "vqgan", s["vq_embed_dim"], num_codes=s["num_vq_embeddings"]
        )
    else:
        module = PretrainedTokenizer(
            part.module,
            "vae",
            s["latent_channels"],
            scaling_factor=part.scaling_factor,
            shift_factor=part.shift_factor,
        )
    return module, {"params": {"inner": part.params}}


def load_tokenizer(
    path: str, input_shape: tuple[int, ...], mesh, rules, where: str = "tokenizer_from"
) -> tuple[PretrainedTokenizer, dict[str, Any], tuple[int, ...]]:
    """(module, variables, latent grid) of the pretrained image tokenizer at `path` for inputs
    of `input_shape` [H, W, C]; one-line UserErrors for another kind, channel count or a size
    its downsampling does not divide."""
    from crossmodal_jax import pretrained

    part = pretrained.load(path, mesh=mesh, rules=rules)
    if part.kind not in ("vqgan", "vae"):
        raise UserError(f"{where}={path!r} is a {part.kind}, not an image tokenizer (vqgan or vae)")
    if len(input_shape) != 3:
        raise UserError(
            f"{where}={path!r}: a {part.kind} reads images, these inputs are {input_shape}"
        )
    want = part.config["in_channels"]
    if input_shape[-1] != want:
        raise UserError(
            f"{where}={path!r}: the {part.kind} reads images of {want} channels, this data's "
            f"have {input_shape[-1]}"
        )
    module, variables = as_tokenizer(part)
    factor = autoencoder.downsampling(part.config)
    if input_shape[0] % factor or input_shape[1] % factor:
        raise UserError(
            f"{where}={path!r}: the {part.kind} downsamples {factor}x, which does not divide "
            f"this data's {input_shape[0]}x{input_shape[1]} images"
        )
    grid = (input_shape[0] // factor, input_shape[1] // factor)
    return module, variables, grid
