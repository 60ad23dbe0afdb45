"""PatchGAN discriminator (pix2pix, Isola et al. 2017; VQGAN's `NLayerDiscriminator`).

A stack of stride-2 4×4 convolutions with leaky ReLU, then a stride-1 4×4 convolution to one
logit per patch: it judges local texture (is this patch real?) rather than the whole input, which
is what an MSE-trained decoder gets wrong (blur). Works on any number of spatial axes, like the
VQ-VAE. GroupNorm instead of VQGAN's BatchNorm: no batch statistics to carry, and the same result
on every shard of a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.layers import conv, group_norm


class PatchDiscriminator(nn.Module):
    """Inputs f32[B, *spatial, C] in [-1, 1] -> patch logits f32[B, *patch_grid, 1]."""

    channels: int = 32
    num_layers: int = 2  # stride-2 convolutions: each halves every spatial axis
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
        nd = x_BxSxC.ndim - 2
        h = conv(self.channels, 4, strides=2, ndim=nd, dtype=self.dtype, name="conv_in")(
            x_BxSxC.astype(self.dtype)
        )
        h = nn.leaky_relu(h, 0.2)
        width = self.channels
        for i in range(1, self.num_layers):
            width = self.channels * min(2**i, 8)
            h = conv(width, 4, strides=2, ndim=nd, dtype=self.dtype, name=f"down{i}")(h)
            h = nn.leaky_relu(group_norm(width, dtype=self.dtype, name=f"norm{i}")(h), 0.2)
        h = conv(width * 2, 4, ndim=nd, dtype=self.dtype, name="mid")(h)
        h = nn.leaky_relu(group_norm(width * 2, dtype=self.dtype, name="norm_mid")(h), 0.2)
        return conv(1, 4, ndim=nd, dtype=self.dtype, name="logits")(h).astype(jnp.float32)
