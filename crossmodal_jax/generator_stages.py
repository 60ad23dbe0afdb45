"""Generator stages: a DiT trained by diffusion to produce the task's target, one builder per
(diffusion process, target modality):

- ("gaussian", "image"): Gaussian diffusion over the frozen tokenizer's normalized VQ latents;
- ("masked", "image"):   masked diffusion over the tokenizer's code ids, conditioned on caption bytes;
- ("masked", "text"):    masked diffusion over caption bytes, conditioned on the source's code ids.

The frozen tokenizer rides along in `model_state["tokenizer"]`, so the step stays pure and the
tokenizer is sharded and checkpointed like everything else.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax import data, sharding
from crossmodal_jax.augment import code_shift, compose, source_affine, source_shift
from crossmodal_jax.data import text as text_tok
from crossmodal_jax.diffusion import gaussian, masked
from crossmodal_jax.evaluate_text import examples_table
from crossmodal_jax.generation import (
    generate_in_batches,
    make_image_generator,
    make_masked_image_generator,
    make_text_generator,
)
from crossmodal_jax.metrics import MetricWriter, save_png
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.models.token_dit import TokenDiT
from crossmodal_jax.objectives import (
    SOURCE_CODES,
    SOURCE_CONDITIONS,
    encode_latents,
    gaussian_diffusion_objective,
    masked_diffusion_objective,
    source_code_ids,
    text_tokens,
    vq_tokens,
)
from crossmodal_jax.stages import (
    build_tokenizer,
    fixed_test_batch,
    latent_grid,
    model_source,
    picture_grid,
    task,
    text_tokenizer,
    tokenizer_variables,
    train_iterator_factory,
)
from crossmodal_jax.train import RunContext, StageSpec

log = logging.getLogger("crossmodal_jax")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dit_size(m: ml_collections.ConfigDict) -> dict:
    if m.preset:
        return dict(DIT_PRESETS[m.preset])
    return dict(depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads)


def latent_hwc(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The image latent grid and its channels: what Gaussian diffusion generates."""
    return (*latent_grid(config), config.tokenizer.model.code_dim)


def build_dit(config: ml_collections.ConfigDict, hwc: tuple[int, int, int]) -> DiT:
    m = config.generator.model
    return DiT(
        input_size=hwc[:2],
        in_channels=hwc[2],
        patch_size=m.patch_size,
        mlp_ratio=m.mlp_ratio,
        cond_vocab_size=text_tokenizer(config).vocab_size,
        cond_len=config.data.text_max_len,
        dtype=DTYPES[m.dtype],
        remat=m.remat,
        **_dit_size(m),
    )


def build_token_dit(config: ml_collections.ConfigDict) -> TokenDiT:
    """The DiT over token ids: caption bytes (X→text) or VQ ids (text→image, masked)."""
    m = config.generator.model
    num_codes = config.tokenizer.model.num_codes
    grid_len = int(np.prod(latent_grid(config)))
    text_len = config.data.text_max_len
    if task(config).generates_text:
        sizes = dict(seq_len=text_len, vocab_size=text_tokenizer(config).vocab_size)
        cond = dict(cond_vocab_size=num_codes, cond_len=grid_len)
        if m.cond_input == "vectors":
            group = int(np.prod(m.cond_patch)) if m.cond_patch else 1
            cond["cond_len"] = grid_len // group
            cond["cond_feature_dim"] = config.tokenizer.model.code_dim * group
            cond["cond_pool_hidden"] = m.get("cond_pool_hidden", 0)
            cond["cond_dropout"] = m.get("cond_dropout", 0.0)
            if m.get("cond_conv", ()):  # the stem groups its features (source_condition: none)
                grid = tuple(latent_grid(config))
                stride = tuple(m.get("cond_conv_stride", ())) or (1,) * len(grid)
                cond["cond_conv"] = tuple(m.cond_conv)
                cond["cond_conv_kernel"] = tuple(m.cond_conv_kernel) or 3
                cond["cond_conv_stride"] = stride
                cond["cond_grid"] = grid
                cond["cond_patch"] = tuple(m.cond_patch) or (1,) * len(grid)
                cond["cond_feature_dim"] = config.tokenizer.model.code_dim
                cond["cond_len"] = grid_len // int(np.prod(stride)) // group
    else:  # code ids + one extra id, the absorbing mask state
        sizes = dict(seq_len=grid_len, vocab_size=num_codes + 1)
        cond = dict(cond_vocab_size=text_tokenizer(config).vocab_size, cond_len=text_len)
    return TokenDiT(
        mlp_ratio=m.mlp_ratio, dtype=DTYPES[m.dtype], remat=m.remat, **sizes, **cond, **_dit_size(m)
    )


def latent_statistics(config, tokenizer, tok_vars, mesh, num_batches: int = 8) -> dict:
    """Per-channel mean and one global std of the quantized latents over training batches.

    Diffusion assumes unit-scale data; VQ latents have whatever scale the codebook learned.
    """
    it = train_iterator_factory(config, config.generator.train)()
    encode = jax.jit(lambda v, x: encode_latents(tokenizer, v, x), out_shardings=P())
    zs = [
        np.asarray(encode(tok_vars, sharding.global_batch(next(it), mesh)["image"]))
        for _ in range(num_batches)
    ]
    z = np.concatenate(zs).reshape(-1, zs[0].shape[-1])
    mean = z.mean(axis=0)
    std = float(np.sqrt(np.mean((z - mean) ** 2)))
    rep = sharding.replicated(mesh)
    return {
        "mean": jax.device_put(mean.astype(np.float32), rep),
        "std": jax.device_put(np.float32(max(std, 1e-6)), rep),
    }


# The current config's jitted sampler, shared by training summaries and the final evaluation: with
# batches padded to eval.batch_size (generate_in_batches) a run compiles it once.
_IMAGE_GENERATORS: dict[str, Any] = {}


def image_generator(config: ml_collections.ConfigDict):
    """The jitted text→image sampler: fn(params, model_state, ids, mask, key) -> images."""
    key = config.to_json()
    if key not in _IMAGE_GENERATORS:
        _IMAGE_GENERATORS.clear()
        _IMAGE_GENERATORS[key] = _build_image_generator(config)
    return _IMAGE_GENERATORS[key]


def _build_image_generator(config: ml_collections.ConfigDict):
    sample_cfg = config.generator.sample
    if config.generator.diffusion.process == "masked":
        return make_masked_image_generator(
            build_token_dit(config),
            build_tokenizer(config),
            sample_cfg,
            latent_grid=latent_grid(config),
        )
    hwc = latent_hwc(config)
    diff = config.generator.diffusion
    return make_image_generator(
        build_dit(config, hwc),
        build_tokenizer(config),
        gaussian.make_schedule(diff.schedule, diff.timesteps),
        sample_cfg,
        prediction=diff.prediction,
        latent_hwc=hwc,
    )


def text_generator(config: ml_collections.ConfigDict):
    """The jitted X→text sampler: fn(params, model_state, source, key) -> caption ids."""
    source = task(config).source
    return make_text_generator(
        build_token_dit(config),
        config.generator.sample,
        text_len=config.data.text_max_len,
        source_key=source,
        condition=source_condition(config),
        forbidden_ids=text_tokenizer(config).unused_ids,
    )


def source_condition(config: ml_collections.ConfigDict):
    """What an X→text DiT attends to: the source's code ids or code vectors."""
    m = config.generator.model
    make = SOURCE_CONDITIONS[m.cond_input]
    # With a conv stem the DiT sees the whole grid and groups the stem's features itself.
    patch = () if m.get("cond_conv", ()) else tuple(m.get("cond_patch", ()))
    return make(build_tokenizer(config), task(config).source, patch)


def _image_summary(ctx: RunContext):
    """Sample grids of the configured prompts: TensorBoard per prompt, a PNG per summary step."""
    config = ctx.config
    generate = image_generator(config)
    prompts = list(config.eval.prompts)
    n = config.eval.samples_per_prompt
    ids, mask = text_tokenizer(config).encode_batch(
        [p for p in prompts for _ in range(n)], config.data.text_max_len
    )

    def summarize(state, step, writer: MetricWriter):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        images = generate_in_batches(generate, state, ids, mask, key, config.eval.batch_size)
        for i, prompt in enumerate(prompts):
            tag = "samples/" + prompt.replace(" ", "_")  # TensorBoard tags have no spaces
            writer.image(step, tag, picture_grid("image", images[i * n : (i + 1) * n], cols=n))
        if writer.enabled:
            grid = picture_grid("image", images, cols=n)
            save_png(os.path.join(ctx.workdir, "generator", f"samples_{step:06d}.png"), grid)
            writer.text(
                step, "sample grid rows", "\n".join(f"{i}: {p}" for i, p in enumerate(prompts))
            )

    return summarize


def _text_summary(ctx: RunContext):
    """Captions of a few fixed test inputs beside their references, in TensorBoard and the log."""
    config = ctx.config
    generate = text_generator(config)
    shown = fixed_test_batch(config, 8)
    source = shown[task(config).source]
    caption_tokenizer = text_tokenizer(config)
    references = caption_tokenizer.decode_batch(shown["text"])

    def summarize(state, step, writer: MetricWriter):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        captions = caption_tokenizer.decode_batch(
            np.asarray(generate(state.ema_params, state.model_state, source, key))
        )
        table = examples_table([str(i) for i in range(len(captions))], captions, references)
        writer.text(step, "captions", table)
        if writer.enabled:
            log.info("generator step %d captions: %s", step, " | ".join(captions[:4]))

    return summarize


def _frozen_tokenizer(ctx: RunContext) -> dict:
    return {"tokenizer": tokenizer_variables(ctx)}


def gaussian_image_stage(ctx: RunContext) -> StageSpec:
    config = ctx.config
    tokenizer = build_tokenizer(config)
    frozen = _frozen_tokenizer(ctx)
    frozen["latents"] = latent_statistics(config, tokenizer, frozen["tokenizer"], ctx.mesh)
    hwc = latent_hwc(config)
    dit = build_dit(config, hwc)
    diff = config.generator.diffusion
    L = config.data.text_max_len

    def init_variables(key):
        x = jnp.zeros((1, *hwc), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        return dit.init(key, x, t, jnp.zeros((1, L), jnp.int32), jnp.ones((1, L), jnp.int32))

    objective = gaussian_diffusion_objective(
        dit,
        tokenizer,
        gaussian.make_schedule(diff.schedule, diff.timesteps),
        prediction=diff.prediction,
        cond_drop=diff.cond_drop,
    )
    return StageSpec(
        name="generator",
        train_cfg=config.generator.train,
        init_variables=init_variables,
        objective=objective,
        make_iterator=train_iterator_factory(config, config.generator.train),
        frozen_state=frozen,
        summarize=_image_summary(ctx),
    )


def precomputed_codes_iterator_factory(ctx: RunContext, tokenizer):
    """Train batches {SOURCE_CODES, "text", "text_mask"}: the frozen tokenizer's code ids of every
    training source, computed once when training starts (generator.precompute_codes).

    Running the tokenizer's encoder inside every step costs more than the small text DiT (speech:
    ~0.2 s of a ~0.25 s step on 2 cores); the codes never change, so compute them once, as DiT
    training on precomputed VAE latents does. Shuffling, sharding and the checkpointed iterator are
    those of every stage (the records are a random-access list, like `data.materialize`).
    """
    config = ctx.config
    source_key = task(config).source

    def make_iterator():
        train_source, transform = model_source(config, "train")
        tok_vars = tokenizer_variables(ctx)
        encode = jax.jit(lambda v, x: source_code_ids(tokenizer, v, x), out_shardings=P())
        start, records = time.perf_counter(), []
        batches = data.make_eval_batches(
            train_source, batch_size=config.eval.batch_size, transform=transform
        )
        for batch in batches:
            x, n = batch[source_key], len(batch[source_key])
            # The last batch is padded to the full size: one compiled shape, and a batch that
            # still divides over the mesh's data axes.
            pad = config.eval.batch_size - n
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad > 0 else x
            ids = np.asarray(encode(tok_vars, x))[:n]
            records += [
                {SOURCE_CODES: ids[i], "text": batch["text"][i], "text_mask": batch["text_mask"][i]}
                for i in range(len(ids))
            ]
        log.info(
            "[generator] code ids of %d training sources in %.1f s (generator.precompute_codes)",
            len(records),
            time.perf_counter() - start,
        )
        return data.make_train_iterator(
            records,
            global_batch_size=config.generator.train.batch_size,
            seed=config.seed,
            transform=None,
        )

    return make_iterator


def masked_stage(ctx: RunContext) -> StageSpec:
    """Masked diffusion over token ids: caption bytes from source codes, or codes from captions."""
    config = ctx.config
    the_task = task(config)
    tokenizer = build_tokenizer(config)
    dit = build_token_dit(config)
    diff = config.generator.diffusion
    augment = None
    make_iterator = train_iterator_factory(config, config.generator.train)
    if the_task.generates_text:
        target, condition, mask_id = text_tokens(), source_condition(config), text_tok.MASK_ID
        summarize = _text_summary(ctx)
        augment = compose(
            source_shift(the_task.source, config.generator.source_shift),
            source_affine(the_task.source, *config.generator.source_affine),
        )
        if config.generator.precompute_codes:
            make_iterator = precomputed_codes_iterator_factory(ctx, tokenizer)
            augment = code_shift(SOURCE_CODES, config.generator.code_shift)
    else:
        codes = vq_tokens(tokenizer, the_task.continuous)
        target, condition, mask_id = codes, text_tokens(), tokenizer.num_codes
        summarize = _image_summary(ctx)

    def init_variables(key):
        ids = jnp.zeros((1, dit.seq_len), jnp.int32)
        length, f = dit.cond_input_shape
        if f:  # code vectors
            cond = jnp.zeros((1, length, f), jnp.float32)
        else:  # token ids
            cond = jnp.zeros((1, length), jnp.int32)
        mask = jnp.ones((1, length), jnp.int32)
        return dit.init(key, ids, jnp.zeros((1,), jnp.float32), cond, mask)

    objective = masked_diffusion_objective(
        dit,
        masked.make_mask_schedule(diff.schedule),
        mask_id=mask_id,
        target=target,
        condition=condition,
        cond_drop=diff.cond_drop,
        weighting=diff.loss_weighting,
        augment=augment,
        word_mask_prob=diff.get("word_mask_prob", 0.0) if the_task.generates_text else 0.0,
    )
    return StageSpec(
        name="generator",
        train_cfg=config.generator.train,
        init_variables=init_variables,
        objective=objective,
        make_iterator=make_iterator,
        frozen_state=_frozen_tokenizer(ctx),
        summarize=summarize,
    )


GENERATORS = {
    ("gaussian", "image"): gaussian_image_stage,
    ("masked", "image"): masked_stage,
    ("masked", "text"): masked_stage,
}


def build(ctx: RunContext) -> StageSpec:
    key = (ctx.config.generator.diffusion.process, task(ctx.config).target)
    return GENERATORS[key](ctx)
