"""Tiny random-weight pretrained parts saved as their libraries save them (diffusers /
transformers `save_pretrained`), for runs that use pretrained parts: the `tokenizer_from` and
`text_encoder` smoke runs. Needs the `bench` extra (torch, diffusers, transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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


def tiny_t5(folder: Path, words: Sequence[str], seed: int = 0) -> Path:
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
