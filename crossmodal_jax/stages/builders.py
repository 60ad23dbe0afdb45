"""The generator's models built from the experiment: a DiT over latent grids (Gaussian
diffusion) and a DiT over token ids (masked diffusion), and what an X→text DiT attends to."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections

from crossmodal_jax.data.text import ClassTokenizer
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models.dit import DIT_LAYOUTS, DIT_PRESETS, DiT
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.stages.objectives import SOURCE_CONDITIONS, TokenFn, encoded_text, text_tokens

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dit_size(m: ml_collections.ConfigDict) -> dict:
    if m.preset:
        return dict(DIT_PRESETS[m.preset])
    return dict(depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads)


def caption_condition(exp: Experiment) -> TokenFn:
    """What a text→image DiT is conditioned on: the caption's ids, or a pretrained text
    encoder's hidden states of them (config.text_encoder; frozen in model_state)."""
    if exp.text_encoder is not None:
        return encoded_text(exp.text_encoder.module)
    return text_tokens()


def latent_hwc(exp: Experiment) -> tuple[int, int, int]:
    """The image latent grid and its channels: what Gaussian diffusion generates."""
    return (*exp.latent_grid, exp.tokenizer.code_dim)


def condition_grid(m: ml_collections.ConfigDict, grid: tuple[int, ...]) -> tuple[int, ...]:
    """The grid an X→text DiT's condition tokens group by `m.cond_patch`: the source's code grid,
    or the conv stem's after its first stride (`m.cond_conv_stride`)."""
    stride = tuple(m.cond_conv_stride) or (1,) * len(grid)
    return tuple(n // s for n, s in zip(grid, stride, strict=True))


def build_generator_model(exp: Experiment, own: bool = False):
    """The generator's model: a DiT over latents, or over token ids for the masked process.
    A task's view of a joint model when the experiment has one, unless `own`."""
    if exp.config.generator.diffusion.process == "masked":
        return build_token_dit(exp, own)
    return build_dit(exp, own)


def example_inputs(exp: Experiment, model=None) -> tuple:
    """Zero arguments of one example for the generator model's `init` (default: the model
    `build_generator_model` gives): latents, time, caption ids and mask; or target ids, time,
    the condition (ids, or code vectors [1, L, F]) and its mask."""
    model = model if model is not None else build_generator_model(exp)
    if exp.config.generator.diffusion.process == "masked":
        ids = jnp.zeros((1, model.seq_len), jnp.int32)
        length, f = model.cond_input_shape
        shape, dtype = ((1, length, f), jnp.float32) if f else ((1, length), jnp.int32)
        mask = jnp.ones((1, length), jnp.int32)
        return ids, jnp.zeros((1,), jnp.float32), jnp.zeros(shape, dtype), mask
    L = exp.config.data.text_max_len
    x = jnp.zeros((1, *latent_hwc(exp)), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    if exp.text_encoder is not None:  # the encoder's hidden states, not ids
        cond = jnp.zeros((1, L, exp.text_encoder.width), jnp.float32)
    else:
        cond = jnp.zeros((1, L), jnp.int32)
    return x, t, cond, jnp.ones((1, L), jnp.int32)


def build_dit(exp: Experiment, own: bool = False) -> DiT:
    """The DiT over the tokenizer's latent grid, conditioned on caption tokens (or the joint
    model's view of this task, unless `own`)."""
    if exp.generator_model is not None and not own:
        return exp.generator_model
    m = exp.config.generator.model
    hwc = latent_hwc(exp)
    return DiT(
        input_size=hwc[:2],
        in_channels=hwc[2],
        patch_size=m.patch_size,
        mlp_ratio=m.mlp_ratio,
        cond_vocab_size=exp.text.vocab_size,
        cond_len=exp.config.data.text_max_len,
        cond_feature_dim=exp.text_encoder.width if exp.text_encoder is not None else 0,
        # data.text_classes: the caption is a class index, read by DiT's label embedding.
        num_classes=exp.text.vocab_size if isinstance(exp.text, ClassTokenizer) else 0,
        dtype=DTYPES[m.dtype],
        remat=m.remat,
        conditioning=m.conditioning,
        attention=m.attention,
        **DIT_LAYOUTS[m.layout],  # a converted checkpoint's numerics (generator.init_from)
        **_dit_size(m),
    )


def build_token_dit(exp: Experiment, own: bool = False) -> TokenDiT:
    """The DiT over token ids: caption tokens (X→text) or VQ ids (text→image, masked); the joint
    model's view of this task when there is one, unless `own`."""
    if exp.generator_model is not None and not own:
        return exp.generator_model
    m = exp.config.generator.model
    num_codes = exp.tokenizer.vocab_size
    grid = exp.latent_grid
    text_len = exp.config.data.text_max_len
    if exp.task.generates_text:
        sizes = dict(seq_len=text_len, vocab_size=exp.text.vocab_size)
        cond = dict(cond_vocab_size=num_codes, cond_len=math.prod(exp.code_grid))
        if m.cond_input == "vectors":
            group = math.prod(m.cond_patch)  # () = 1: a code a token
            cond["cond_len"] = math.prod(condition_grid(m, grid)) // group
            cond["cond_feature_dim"] = exp.tokenizer.code_dim * group
            cond["cond_pool_hidden"] = m.cond_pool_hidden
            cond["cond_dropout"] = m.cond_dropout
            cond["cond_mean_pool"] = m.cond_mean_pool
            if m.cond_conv:  # the stem groups its features (source_condition: none)
                cond["cond_conv"] = tuple(m.cond_conv)
                cond["cond_conv_kernel"] = tuple(m.cond_conv_kernel) or 3
                cond["cond_conv_stride"] = tuple(m.cond_conv_stride) or (1,) * len(grid)
                cond["cond_grid"] = grid
                cond["cond_patch"] = tuple(m.cond_patch) or (1,) * len(grid)
                cond["cond_feature_dim"] = exp.tokenizer.code_dim
    else:  # code ids + one extra id, the absorbing mask state
        sizes = dict(seq_len=math.prod(exp.code_grid), vocab_size=num_codes + 1)
        cond = dict(cond_vocab_size=exp.text.vocab_size, cond_len=text_len)
    return TokenDiT(
        mlp_ratio=m.mlp_ratio,
        dtype=DTYPES[m.dtype],
        remat=m.remat,
        conditioning=m.conditioning,
        attention=m.attention,
        **sizes,
        **cond,
        **_dit_size(m),
    )


def source_condition(exp: Experiment) -> TokenFn:
    """What an X→text DiT attends to: the source's code ids or code vectors."""
    m = exp.config.generator.model
    # With a conv stem the DiT sees the whole grid and groups the stem's features itself.
    patch = () if m.cond_conv else tuple(m.cond_patch)
    return SOURCE_CONDITIONS[m.cond_input](exp.tokenizer, exp.task.source, patch)
