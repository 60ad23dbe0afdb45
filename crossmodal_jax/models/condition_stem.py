"""Convolutions over a source's code grid before an X→text DiT reads it.

The DiT reads a source as tokens (groups of code vectors, `group_codes`) with learned positions.
A digit that moves across a clip, or sits anywhere in a frame, then appears under different
positions in every example, and the DiT has to learn each digit at each place from a few
thousand examples. A few convolutions over the code grid, shared by every position, see the
digit's shape wherever it is; their max and mean over the grid (the stem's `summary`) do not
change when the digit moves, and go into the adaLN vector in place of the position-dependent
map of all codes (dit.ConditionEmbedder). The tokens the DiT attends to are the stem's features,
grouped like plain codes, so where things are (a clip's motion) is still there to read.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models.layers import conv


def group_codes(z_BxGxD: jax.Array, patch: tuple[int, ...]) -> jax.Array:
    """Code grid [B, *grid, D] -> tokens [B, prod(grid / patch), prod(patch) * D]: each token holds
    the codes of one patch (row-major over patches, then within a patch), like DiT patchify."""
    grid, d = z_BxGxD.shape[1:-1], z_BxGxD.shape[-1]
    patch = patch or (1,) * len(grid)
    split = [z_BxGxD.shape[0]]
    for g, p in zip(grid, patch, strict=True):
        split += [g // p, p]
    n = len(grid)
    z = z_BxGxD.reshape(*split, d)
    z = z.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return z.reshape(z.shape[0], -1, int(np.prod(patch)) * d)


class ConditionStem(nn.Module):
    """Code vectors [B, prod(grid), F] (row-major over `grid`) -> (tokens, summary).

    tokens [B, prod(grid / stride / patch), prod(patch) * features[-1]]: the last conv layer's
    features, grouped by `patch`; summary [B, 2 * features[-1]]: their max and mean over the
    whole grid. Each layer is a SAME-padded conv of `kernel` (an int, or one size per grid axis;
    a 3-axis grid uses the (2+1)-D factorized conv, layers.conv) followed by GELU; the first one
    steps by `stride` (one per axis; () = 1s): a fine code grid read at full resolution, the
    later layers and the DiT at a coarser one.
    """

    grid: tuple[int, ...]
    features: tuple[int, ...]
    kernel: int | tuple[int, ...]
    patch: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dtype: jnp.dtype = jnp.float32

    @property
    def out_dim(self) -> int:
        """Feature size of one token."""
        return int(np.prod(self.patch or (1,))) * self.features[-1]

    @property
    def num_tokens(self) -> int:
        """Tokens per example: the grid over the first layer's stride, over `patch`."""
        stride, patch = self.stride or (1,) * len(self.grid), self.patch or (1,) * len(self.grid)
        return int(np.prod([g // s // p for g, s, p in zip(self.grid, stride, patch, strict=True)]))

    @nn.compact
    def __call__(self, codes_BxNxF: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, n, f = codes_BxNxF.shape
        if n != int(np.prod(self.grid)):
            raise ValueError(f"{n} condition vectors do not fill the code grid {self.grid}")
        x = codes_BxNxF.reshape(b, *self.grid, f).astype(self.dtype)
        for i, width in enumerate(self.features):
            stride = (self.stride or 1) if i == 0 else 1
            layer = conv(
                width, self.kernel, strides=stride, ndim=len(self.grid), dtype=self.dtype,
                name=f"conv{i}",
            )  # fmt: skip
            x = nn.gelu(layer(x), approximate=True)
        flat_BxNxC = x.reshape(b, -1, x.shape[-1])
        summary = jnp.concatenate([flat_BxNxC.max(axis=1), flat_BxNxC.mean(axis=1)], axis=-1)
        return group_codes(x, tuple(self.patch)), summary
