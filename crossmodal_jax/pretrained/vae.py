"""KL autoencoders (the Stable Diffusion / PixArt VAE) as the pretrained kind "vae": diffusers
`AutoencoderKL` folders, and latent-diffusion state dicts (`encoder.down.0.block...`, e.g.
`vae-ft-mse-840000-ema-pruned.ckpt`) whose encoder/decoder are taming's.

Interface (DESIGN §4): `encode` returns the posterior mean [B, h, w, latent] *before*
`scaling_factor` (diffusers' `encode(x).latent_dist.mean`); `moments` returns (mean, log-variance)
with diffusers' clamp to [-30, 20]; `sample(images, rng)` draws from the posterior; `decode`
takes unscaled latents. `scaling_factor` / `shift_factor` (and `latents_mean` / `latents_std` when
the config has them) are kept in the settings for the pipelines that scale latents: the part
applies none of them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained import autoencoder, autoencoder_names
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import conv

NAMES = ("AutoencoderKL",)
IGNORE = (r"loss\..*",)  # latent-diffusion's LPIPS / discriminator / logvar (training only)


def matches(ckpt: Checkpoint) -> bool:
    """A latent-diffusion KL autoencoder: taming's encoder names, quant_conv, and no codebook."""
    return (
        "encoder.down.0.block.0.conv1.weight" in ckpt
        and "quant_conv.weight" in ckpt
        and "quantize.embedding.weight" not in ckpt
    )


class AutoencoderKL(nn.Module):
    """Encoder -> quant_conv -> (mean, logvar); latents -> post_quant_conv -> decoder."""

    encoder: autoencoder.Encoder
    decoder: autoencoder.Decoder
    latent_channels: int  # our latents (latent-diffusion's embed_dim)
    z_channels: int  # the decoder's input
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def setup(self) -> None:
        if self.use_quant_conv:
            self.quant_conv = autoencoder.conv1x1(2 * self.latent_channels)
        if self.use_post_quant_conv:
            self.post_quant_conv = autoencoder.conv1x1(self.z_channels)

    def moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior (mean, log-variance), each [B, h, w, latent]."""
        h = self.encoder(images)
        if self.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode(self, images: jax.Array) -> jax.Array:
        """The posterior mean [B, h, w, latent], unscaled."""
        return self.moments(images)[0]

    def sample(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """A draw from the posterior, mean + std * N(0, 1), unscaled."""
        mean, logvar = self.moments(images)
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents [B, h, w, latent] -> images [B, H, W, C]."""
        if self.use_post_quant_conv:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decode(self.encode(images))


def _optional_floats(value: Any) -> list[float] | None:
    return None if value is None else [float(v) for v in value]


def settings(ckpt: Checkpoint) -> dict[str, Any]:
    """From a diffusers config.json, else inferred from a latent-diffusion state dict."""
    if ckpt.config:
        config = ckpt.config
        s = autoencoder.diffusers_settings(config, str(ckpt.path / "config.json"))
        latent = int(config.get("latent_channels", 4))
        shift = config.get("shift_factor")
        s |= {
            "layout": "diffusers",
            "latent_channels": latent,
            "z_channels": latent,
            "use_quant_conv": bool(config.get("use_quant_conv", True)),
            "use_post_quant_conv": bool(config.get("use_post_quant_conv", True)),
            "scaling_factor": float(config.get("scaling_factor", 0.18215)),
            "shift_factor": None if shift is None else float(shift),
            "latents_mean": _optional_floats(config.get("latents_mean")),
            "latents_std": _optional_floats(config.get("latents_std")),
        }
    else:
        if "post_quant_conv.weight" not in ckpt:
            raise CheckpointError(f"{ckpt.path}: missing tensor 'post_quant_conv.weight'")
        s = autoencoder.taming_settings(ckpt)
        s.pop("encoder_out_channels")  # 2 * z_channels (double_z)
        s |= {
            "layout": "taming",
            # quant_conv: 2 z -> 2 embed_dim; post_quant_conv: embed_dim -> z.
            "latent_channels": ckpt.shape("post_quant_conv.weight")[1],
            "z_channels": s.pop("decoder_in_channels"),
            "use_quant_conv": True,
            "use_post_quant_conv": True,
            # No config to say what the model was trained with: unscaled, to be set by the caller.
            "scaling_factor": 1.0,
            "shift_factor": None,
        }
    s["conv_attention"] = autoencoder_names.conv_attention(ckpt)
    return s


def build(s: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(
        encoder=autoencoder.build(s, "down", 2 * s["z_channels"]),
        decoder=autoencoder.build(s, "up", s["out_channels"]),
        latent_channels=s["latent_channels"],
        z_channels=s["z_channels"],
        use_quant_conv=s["use_quant_conv"],
        use_post_quant_conv=s["use_post_quant_conv"],
    )


init_args = autoencoder.init_args  # the smallest image: one latent pixel


def recipe(s: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    out = autoencoder_names.halves(s, build(s), ckpt)
    if s["use_quant_conv"]:
        out["quant_conv"] = conv("quant_conv")
    if s["use_post_quant_conv"]:
        out["post_quant_conv"] = conv("post_quant_conv")
    return out
