"""Tiny random-weight pretrained parts, saved as their libraries save them (diffusers /
transformers `save_pretrained`): what a smoke run of a real-data config uses in place of the
SD-VAE or a T5 encoder (`tokenizer_from="random:vae"`, `text_encoder="random:t5"`), and what the
tests of the pretrained parts read.

A `random:<kind>` source is written once, seeded, into a folder of the user's cache
(`~/.cache/crossmodal_jax/random_parts`, or `$CROSSMODAL_JAX_CACHE`) and then read through the
same reader as any downloaded checkpoint, so a smoke run exercises the real loading path. Writing
one needs the `bench` extra (torch, diffusers, transformers); reading it does not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from crossmodal_jax.errors import UserError

PREFIX = "random:"
# The tokenizer's whole words besides the letters: enough for the smoke captions to stay short.
T5_WORDS = ("a", "the", "photo", "of", "red", "green", "blue", "circle", "square", "triangle")


def _autoencoder_kwargs(widths: Sequence[int], channels: int) -> dict:
    return dict(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=1,
        norm_num_groups=8,
    )


def tiny_vae(
    folder: Path, widths: Sequence[int] = (8, 16, 16), channels: int = 3, seed: int = 0
) -> Path:
    """An AutoencoderKL with 4 latent channels, downsampling 2^(len(widths) - 1)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(latent_channels=4, **_autoencoder_kwargs(widths, channels))
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def sd_vae(folder: Path, seed: int = 0) -> Path:
    """The Stable Diffusion VAE's architecture (stabilityai/sd-vae-ft-ema's config: 84 M
    parameters, 8× downsampling to 4 channels) with random weights: for benchmarks and memory
    plans at real size, not for pictures."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    kwargs = _autoencoder_kwargs((128, 256, 512, 512), 3)
    kwargs.update(layers_per_block=2, norm_num_groups=32)
    model = diffusers.AutoencoderKL(latent_channels=4, sample_size=256, **kwargs)
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_vqgan(
    folder: Path, widths: Sequence[int] = (8, 16, 16), channels: int = 3, seed: int = 0
) -> Path:
    """A VQModel with a 32-code codebook of 4-d codes."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = diffusers.VQModel(
        latent_channels=4,
        num_vq_embeddings=32,
        vq_embed_dim=4,
        **_autoencoder_kwargs(widths, channels),
    )
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_t5(folder: Path, words: Sequence[str] = T5_WORDS, seed: int = 0) -> Path:
    """A 1-layer T5 v1.1 encoder (width 32) with a sentencepiece-style tokenizer whose pieces are
    `words` (so captions of those words decode back exactly) and the letters."""
    import torch
    import transformers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [(f"▁{w}", -1.0) for w in words]
    tok = transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=32)
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
    )
    transformers.T5EncoderModel(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return Path(folder)


# random:<name> -> the writer of its folder (the defaults: 3-channel images, downsampling 4x).
RANDOM_PARTS: dict[str, Callable[[Path], Path]] = {
    "vae": tiny_vae,
    "vqgan": tiny_vqgan,
    "t5": tiny_t5,
    "sd-vae": sd_vae,
}


def is_random(path: str | os.PathLike) -> bool:
    return str(path).startswith(PREFIX)


def cache_root() -> Path:
    root = os.environ.get("CROSSMODAL_JAX_CACHE") or "~/.cache/crossmodal_jax"
    return Path(root).expanduser() / "random_parts"


def resolve(path: str | os.PathLike) -> Path:
    """The folder of a `random:<name>` part, written on first use (atomically: a folder is
    complete or absent, whichever process writes it); any other path is returned as it is."""
    if not is_random(path):
        return Path(path)
    name = str(path)[len(PREFIX) :]
    if name not in RANDOM_PARTS:
        raise UserError(
            f"{path!r}: unknown random part; available: random:{', random:'.join(RANDOM_PARTS)}"
        )
    folder = cache_root() / name
    if (folder / "config.json").is_file():
        return folder
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(
            f"{path!r}: writing a random-weight part needs torch, diffusers and transformers "
            '(pip install -e ".[bench]")'
        ) from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        RANDOM_PARTS[name](tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: its folder is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
