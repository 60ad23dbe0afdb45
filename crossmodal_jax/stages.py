"""The stages a config can name: what model, objective, data and summaries each one trains with.

`STAGE_BUILDERS` maps a stage name to a function RunContext -> StageSpec; the loop in train.py runs them.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax import data, sharding
from crossmodal_jax.checkpoint import StageCheckpointer
from crossmodal_jax.data import text as text_tok
from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.generation import make_image_generator
from crossmodal_jax.metrics import MetricWriter, image_grid, save_png
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.models.vqvae import VQVAE, latent_shape
from crossmodal_jax.objectives import encode_latents, gaussian_diffusion_objective, vqvae_objective
from crossmodal_jax.step import make_optimizer
from crossmodal_jax.train import RunContext, StageSpec, abstract_state

log = logging.getLogger("crossmodal_jax")

TASKS = ("text2image",)
DIFFUSION_PROCESSES = ("gaussian",)
IMAGE_UPSCALE = 8  # sample/reconstruction grids are nearest-upscaled so 8x8 digits are visible


def source(config: ml_collections.ConfigDict, split: str):
    """The configured dataset's split as a grain random-access source."""
    return data.get_source(config.data.name, split, config.data.data_dir or None)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    example = source(config, "train")[0]
    return tuple(np.asarray(example["image"]).shape)


def features(config: ml_collections.ConfigDict) -> data.ImageTextFeatures:
    """The record -> model-batch transform of the configured dataset."""
    max_value = data.get_spec(config.data.name).image_max_value
    return data.ImageTextFeatures(config.data.text_max_len, image_max_value=max_value)


def train_iterator_factory(config, train_cfg):
    train_source = source(config, "train")
    transform = features(config)
    return lambda: data.make_train_iterator(
        train_source,
        global_batch_size=train_cfg.batch_size,
        seed=config.seed,
        transform=transform,
        worker_count=config.data.worker_count,
    )


def fixed_test_batch(config, n: int) -> dict[str, np.ndarray]:
    """The first n test examples: the same images in every reconstruction summary."""
    batches = data.make_eval_batches(
        source(config, "test"), batch_size=n, transform=features(config)
    )
    return next(iter(batches))


# ---------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(config: ml_collections.ConfigDict) -> VQVAE:
    return VQVAE(in_channels=image_shape(config)[-1], **config.tokenizer.model)


def tokenizer_stage(ctx: RunContext) -> StageSpec:
    config = ctx.config
    model = build_tokenizer(config)
    dummy = jnp.zeros((1, *image_shape(config)), jnp.float32)
    shown = fixed_test_batch(config, 16)["image"]

    def init_variables(key):
        params_key, vq_key = jax.random.split(key)
        return model.init({"params": params_key, "vq": vq_key}, dummy, train=False)

    # Replicated outputs: every process may read them (multi-host safe).
    reconstruct = jax.jit(lambda v, x: model.apply(v, x, train=False)[0], out_shardings=P())

    def summarize(state, step, writer: MetricWriter):
        variables = {"params": state.params, **state.model_state}
        rec = np.asarray(reconstruct(variables, shown))
        grid = image_grid(
            data.unit_to_uint8(np.concatenate([shown, rec])), cols=len(shown), upscale=IMAGE_UPSCALE
        )
        writer.image(step, "reconstructions", grid)  # top row: inputs; bottom: reconstructions
        if writer.enabled:
            save_png(
                os.path.join(ctx.workdir, "tokenizer", f"reconstructions_{step:06d}.png"), grid
            )

    return StageSpec(
        name="tokenizer",
        train_cfg=config.tokenizer.train,
        init_variables=init_variables,
        objective=vqvae_objective(model),
        make_iterator=train_iterator_factory(config, config.tokenizer.train),
        summarize=summarize,
    )


def tokenizer_variables(ctx: RunContext) -> dict:
    """The trained tokenizer: from this run's results, or restored from the workdir."""
    state = ctx.results.get("tokenizer")
    if state is None:
        state = restore_stage_state(ctx, "tokenizer", tokenizer_stage(ctx), stage_index=0)
    return {"params": state.params, "vq_stats": state.model_state["vq_stats"]}


def restore_stage_state(ctx: RunContext, name: str, spec: StageSpec, *, stage_index: int):
    """Restore a finished stage's final state from `<workdir>/<name>/checkpoints`."""
    tx, _ = make_optimizer(spec.train_cfg)
    _, abstract, _ = abstract_state(spec, tx, jax.random.key(0), ctx)
    ckpt = StageCheckpointer(
        os.path.join(ctx.workdir, name, "checkpoints"),
        keep=spec.train_cfg.keep_checkpoints,
        save_every=0,
    )
    restored = ckpt.restore(abstract)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"no {name} checkpoint in {os.path.join(ctx.workdir, name)}; train the {name} stage "
            f"first (add {name!r} to config.stages)"
        )
    return restored[1]


# ---------------------------------------------------------------------------------------- generator


def build_dit(config: ml_collections.ConfigDict, latent_hwc: tuple[int, int, int]) -> DiT:
    m = config.generator.model
    size = (
        dict(DIT_PRESETS[m.preset])
        if m.preset
        else dict(depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads)
    )
    return DiT(
        input_size=latent_hwc[:2],
        in_channels=latent_hwc[2],
        patch_size=m.patch_size,
        mlp_ratio=m.mlp_ratio,
        cond_vocab_size=text_tok.VOCAB_SIZE,
        cond_len=config.data.text_max_len,
        **size,
    )


def latent_hwc(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    h, w, _ = image_shape(config)
    lh, lw = latent_shape((h, w), config.tokenizer.model.channel_mult)
    return lh, lw, config.tokenizer.model.code_dim


def latent_statistics(config, tokenizer: VQVAE, tok_vars, mesh, num_batches: int = 8) -> dict:
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


def image_generator(config: ml_collections.ConfigDict):
    """The jitted text→image sampler of this config (see generation.make_image_generator)."""
    hwc = latent_hwc(config)
    diff = config.generator.diffusion
    return make_image_generator(
        build_dit(config, hwc),
        build_tokenizer(config),
        gaussian.make_schedule(diff.schedule, diff.timesteps),
        config.generator.sample,
        prediction=diff.prediction,
        latent_hwc=hwc,
    )


def generator_stage(ctx: RunContext) -> StageSpec:
    config = ctx.config
    tokenizer = build_tokenizer(config)
    tok_vars = tokenizer_variables(ctx)
    hwc = latent_hwc(config)
    dit = build_dit(config, hwc)
    diff = config.generator.diffusion
    schedule = gaussian.make_schedule(diff.schedule, diff.timesteps)
    frozen = {
        "tokenizer": tok_vars,
        "latents": latent_statistics(config, tokenizer, tok_vars, ctx.mesh),
    }
    L = config.data.text_max_len
    generate = image_generator(config)
    prompts = list(config.eval.prompts)
    n = config.eval.samples_per_prompt
    ids, mask = text_tok.encode_batch([p for p in prompts for _ in range(n)], L)

    def init_variables(key):
        x = jnp.zeros((1, *hwc), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        return dit.init(key, x, t, jnp.zeros((1, L), jnp.int32), jnp.ones((1, L), jnp.int32))

    def summarize(state, step, writer: MetricWriter):
        key = jax.random.fold_in(jax.random.key(config.seed), step)
        images = generate(state.ema_params, state.model_state, ids, mask, key)
        images = data.unit_to_uint8(np.asarray(images))
        for i, prompt in enumerate(prompts):
            writer.image(
                step,
                "samples/" + prompt.replace(" ", "_"),  # TensorBoard tags have no spaces
                image_grid(images[i * n : (i + 1) * n], cols=n, upscale=IMAGE_UPSCALE),
            )
        if writer.enabled:
            grid = image_grid(images, cols=n, upscale=IMAGE_UPSCALE)
            save_png(os.path.join(ctx.workdir, "generator", f"samples_{step:06d}.png"), grid)
            writer.text(
                step, "sample grid rows", "\n".join(f"{i}: {p}" for i, p in enumerate(prompts))
            )

    return StageSpec(
        name="generator",
        train_cfg=config.generator.train,
        init_variables=init_variables,
        objective=gaussian_diffusion_objective(
            dit, tokenizer, schedule, prediction=diff.prediction, cond_drop=diff.cond_drop
        ),
        make_iterator=train_iterator_factory(config, config.generator.train),
        frozen_state=frozen,
        summarize=summarize,
    )


STAGE_BUILDERS = {"tokenizer": tokenizer_stage, "generator": generator_stage}
