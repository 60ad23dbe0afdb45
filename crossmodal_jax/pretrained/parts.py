"""What a loaded pretrained part offers: our Flax module, its parameters and jitted entry points.

One class per role (DESIGN §4 "Pretrained parts"): tokenizers (`vqgan`, `vae`) encode and decode
channels-last images in [-1, 1]; text encoders (`t5`, `clip_text`) encode token ids and tokenize
with the folder's own tokenizer; generators (`dit`, `pixart`) are called as the reference model
is, channels last. Parameters are arguments of the jitted functions, not constants baked into the
compiled program, so one compilation serves any weights of the same shapes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.errors import CheckpointError


class Part:
    """A pretrained module with its parameters (`kind`, `module`, `params`, `config`, `path`).

    `config` is the port's own settings (from the folder's config.json or inferred from the
    tensors); `mesh`/`rules`, when given at load, place parameters and activations on a mesh.
    """

    kind: str

    def __init__(
        self,
        kind: str,
        module: nn.Module,
        params: Any,
        config: dict[str, Any],
        path: Path,
        mesh: jax.sharding.Mesh | None = None,
        rules: Sequence | None = None,
    ):
        self.kind, self.module, self.params, self.config, self.path = (
            kind,
            module,
            params,
            config,
            path,
        )
        self.mesh, self.rules = mesh, rules
        self._jitted: dict[str, Any] = {}

    def __repr__(self) -> str:
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
        return f"<pretrained {self.kind} from {self.path}: {n / 1e6:.2f}M parameters>"

    def _context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def call(self, method: str | None, *args: Any) -> jax.Array:
        """module.apply({'params': params}, *args, method=method), jitted once per method."""
        if method not in self._jitted:

            def run(params, *inputs):
                return self.module.apply({"params": params}, *inputs, method=method)

            self._jitted[method] = jax.jit(run)
        with self._context():
            return self._jitted[method](self.params, *args)


def _images(images: Any) -> jax.Array:
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4:
        raise CheckpointError(f"images must be [B, H, W, C] in [-1, 1], got shape {x.shape}")
    return x


class TokenizerPart(Part):
    """VQGAN / VAE: images [B, H, W, C] in [-1, 1] <-> latents [B, h, w, c], float32."""

    def encode(self, images: Any) -> jax.Array:
        """VQGAN: the quantized latents (after quant_conv and the codebook); VAE: the posterior
        mean, before `scaling_factor`."""
        return self.call("encode", _images(images))

    def decode(self, latents: Any) -> jax.Array:
        return self.call("decode", jnp.asarray(latents, jnp.float32))

    def codes(self, images: Any) -> jax.Array:
        """VQGAN only: codebook ids int32 [B, h, w]."""
        if self.kind != "vqgan":
            raise CheckpointError(f"a {self.kind} has no codebook: codes() is for vqgan parts")
        return self.call("codes", _images(images))

    @property
    def scaling_factor(self) -> float:
        return float(self.config.get("scaling_factor", 1.0))

    @property
    def shift_factor(self) -> float:
        return float(self.config.get("shift_factor") or 0.0)


class TextEncoderPart(Part):
    """T5 / CLIP text encoders: token ids -> last hidden state [B, L, D] (after the final norm)."""

    def encode_text(self, input_ids: Any, attention_mask: Any = None) -> jax.Array:
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = (
            jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        )
        return self.call(None, ids, mask)

    @functools.cached_property
    def tokenizer(self):
        from crossmodal_jax.pretrained.text_tokenizer import FolderTokenizer

        return FolderTokenizer(self.path, self.config)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None):
        """(input_ids, attention_mask), int32 [B, L]: the folder's tokenizer, padded to the
        longest text (or to `max_length`, truncating), as the reference pipelines feed it."""
        return self.tokenizer(texts, max_length=max_length)


class GeneratorPart(Part):
    """DiT / PixArt: `part(x, t, ...)` with x [B, H, W, C] latents, channels last; the extra
    arguments are the reference model's (DiT: class labels; PixArt: encoder hidden states and
    their mask)."""

    def __call__(self, x: Any, t: Any, *cond: Any) -> jax.Array:
        return self.call(None, jnp.asarray(x, jnp.float32), jnp.asarray(t), *cond)
