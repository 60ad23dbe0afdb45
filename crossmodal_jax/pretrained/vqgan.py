"""VQGAN image tokenizers as the pretrained kind "vqgan": diffusers `VQModel` folders and
taming-transformers checkpoints (`last.ckpt`: the `VQModel` of Esser et al. 2021, e.g.
vqgan_imagenet_f16_16384), read into one Flax module.

Interface (DESIGN §4): `encode` returns the *quantized* latents (encoder, quant_conv, nearest
codebook entry), `codes` their codebook ids, `decode` takes quantized latents. diffusers splits
the same pipeline differently: its `VQModel.encode` stops before the codebook and its `decode`
quantizes, so our `decode(z_q)` is diffusers' `decode(z_q, force_not_quantize=True)` and our
`latents` is its `encode`. Config keys that only shape diffusers' call signature or training loss
(`lookup_from_codebook`, `force_upcast`; the quantizer's `legacy` beta and `sane_index_shape`)
change none of these outputs and are accepted as they are.

taming files have no config.json: the ddconfig (ch * ch_mult, num_res_blocks, attn_resolutions,
z_channels, n_embed, embed_dim) is read from tensor names and shapes (autoencoder.taming_settings).
Their `loss.*` tensors (LPIPS, discriminator) are training-only and ignored.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.models import layers
from crossmodal_jax.pretrained import autoencoder, autoencoder_names
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import Tensor, conv
from crossmodal_jax.training.sharding import CODE_DIM, CODEBOOK

NAMES = ("VQModel",)
IGNORE = (
    r"loss\..*",  # taming's perceptual loss and discriminator
    r"quantize\.embedding\.(cluster_size|embed_avg)",  # EMA quantizer statistics (training)
)


def matches(ckpt: Checkpoint) -> bool:
    return "quantize.embedding.weight" in ckpt and "encoder.conv_in.weight" in ckpt


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Ids [...] of the codebook rows [N, D] nearest (Euclidean) to each z [..., D], int32.

    |z|^2 - 2 z.e + |e|^2 as taming computes it (diffusers' cdist orders the same); the matmul at
    full float32 precision, so accelerators' faster default does not flip near-ties.
    """
    flat = z.reshape(-1, z.shape[-1])
    dist = (
        jnp.sum(flat**2, axis=-1, keepdims=True)
        - 2 * jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(codebook**2, axis=-1)
    )
    return jnp.argmin(dist, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])


def _codebook_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    # torch's init, U(-1/N, 1/N); loading replaces it.
    return jax.random.uniform(key, shape, dtype, -1.0 / shape[0], 1.0 / shape[0])


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> codebook -> post_quant_conv -> decoder, channels last."""

    encoder: autoencoder.Encoder
    decoder: autoencoder.Decoder
    latent_channels: int  # the encoder's output and the decoder's input (z_channels)
    num_embeddings: int
    embed_dim: int

    def setup(self) -> None:
        self.quant_conv = autoencoder.conv1x1(self.embed_dim)
        self.post_quant_conv = autoencoder.conv1x1(self.latent_channels)
        self.codebook = self.param(
            "codebook",
            layers.partitioned(_codebook_init, (CODEBOOK, CODE_DIM)),
            (self.num_embeddings, self.embed_dim),
            jnp.float32,
        )

    def latents(self, images: jax.Array) -> jax.Array:
        """Pre-quantization latents [B, h, w, embed_dim] (diffusers' VQModel.encode)."""
        return self.quant_conv(self.encoder(images))

    def codes(self, images: jax.Array) -> jax.Array:
        """Codebook ids, int32 [B, h, w]."""
        return nearest_codes(self.latents(images), self.codebook)

    def embed_codes(self, codes: jax.Array) -> jax.Array:
        """Codebook ids [B, h, w] -> quantized latents [B, h, w, embed_dim]."""
        return jnp.take(self.codebook, codes, axis=0)

    def encode(self, images: jax.Array) -> jax.Array:
        """Quantized latents [B, h, w, embed_dim]: each the codebook entry nearest the encoding."""
        return self.embed_codes(self.codes(images))

    def decode(self, latents: jax.Array) -> jax.Array:
        """Quantized latents [B, h, w, embed_dim] -> images [B, H, W, C]."""
        return self.decoder(self.post_quant_conv(latents))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Codebook ids [B, h, w] -> images [B, H, W, C]."""
        return self.decode(self.embed_codes(codes))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decode(self.encode(images))


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    """From a diffusers config.json, else inferred from a taming state dict's tensors."""
    if ckpt.config:
        config = ckpt.config
        where = str(ckpt.path / "config.json")
        norm_type = config.get("norm_type", "group")
        if norm_type != "group":
            raise CheckpointError(
                f"{where}: norm_type={norm_type!r} is not supported (supported: group; "
                "'spatial' is the MoVQ decoder)"
            )
        s = autoencoder.diffusers_settings(config, where)
        latent = int(config.get("latent_channels", 3))
        s |= {
            "layout": "diffusers",
            "latent_channels": latent,
            "num_vq_embeddings": int(config.get("num_vq_embeddings", 256)),
            "vq_embed_dim": int(config.get("vq_embed_dim") or latent),
            "scaling_factor": float(config.get("scaling_factor", 0.18215)),
            "lookup_from_codebook": bool(config.get("lookup_from_codebook", False)),
        }
    else:
        for name, what in (
            ("quantize.proj.weight", "a GumbelQuantize codebook"),
            ("quantize.used", "a remapped codebook (quantize.used)"),
        ):
            if name in ckpt:
                raise CheckpointError(f"{ckpt.path}: {what} is not supported (tensor {name!r})")
        s = autoencoder.taming_settings(ckpt)
        z = s.pop("encoder_out_channels")
        if s.pop("decoder_in_channels") != z:
            raise CheckpointError(
                f"{ckpt.path}: encoder.conv_out gives {z} channels but decoder.conv_in takes "
                f"{ckpt.shape('decoder.conv_in.weight')[1]} (a KL autoencoder, not a VQGAN?)"
            )
        n, d = ckpt.shape("quantize.embedding.weight")
        s |= {
            "layout": "taming",
            "latent_channels": z,
            "num_vq_embeddings": n,
            "vq_embed_dim": d,
            "scaling_factor": 1.0,
        }
    s["conv_attention"] = autoencoder_names.conv_attention(ckpt)
    return s


def build(s: dict[str, Any]) -> VQGAN:
    return VQGAN(
        encoder=autoencoder.build(s, "down", s["latent_channels"]),
        decoder=autoencoder.build(s, "up", s["out_channels"]),
        latent_channels=s["latent_channels"],
        num_embeddings=s["num_vq_embeddings"],
        embed_dim=s["vq_embed_dim"],
    )


init_args = autoencoder.init_args  # the smallest image: one latent pixel


def recipe(s: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    return {
        **autoencoder_names.halves(s, build(s), ckpt),
        "quant_conv": conv("quant_conv"),
        "post_quant_conv": conv("post_quant_conv"),
        "codebook": Tensor("quantize.embedding.weight"),
    }
