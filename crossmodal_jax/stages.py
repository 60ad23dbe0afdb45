"""The stages a config can name: what model, objective, data and summaries each one trains with.

`STAGE_BUILDERS` maps a stage name to a function RunContext -> StageSpec; the loop in train.py runs
them. This file holds the data plumbing shared by all stages and the tokenizer stage; the generator
stages (one per diffusion process and target modality) are in generator_stages.py.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax import data, tasks
from crossmodal_jax.checkpoint import StageCheckpointer
from crossmodal_jax.data import features as feature_lib
from crossmodal_jax.data import folders, sources, tfds_sources
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.errors import UserError
from crossmodal_jax.metrics import MetricWriter, image_grid, save_png
from crossmodal_jax.models.vqvae import VQVAE, latent_shape
from crossmodal_jax.objectives import vqvae_objective
from crossmodal_jax.step import make_optimizer
from crossmodal_jax.train import RunContext, StageSpec, abstract_state

log = logging.getLogger("crossmodal_jax")

TASKS = tuple(tasks.TASKS)
DIFFUSION_PROCESSES = ("gaussian", "masked")
MIN_SHOWN_SIDE = 64  # summary images are nearest-upscaled until their short side is this big


def task(config: ml_collections.ConfigDict) -> tasks.Task:
    return tasks.get_task(config.task)


def source(config: ml_collections.ConfigDict, split: str):
    """The configured dataset's split as a grain random-access source."""
    if config.data.name == folders.NAME:  # validated once per process, then cached
        return folders.get_source(config.data, split)
    if config.data.name == tfds_sources.NAME:  # opened once per process, then cached
        return tfds_sources.get_source(config.data, split)
    return data.get_source(config.data.name, split, config.data.data_dir or None)


def labels_are_digits(config: ml_collections.ConfigDict) -> bool:
    """Whether the dataset's labels are the digit its captions name (digit-naming accuracy)."""
    if config.data.name == tfds_sources.NAME:
        return tfds_sources.spec_of(config.data).digit_labels
    return True  # embedded datasets: their labels are digits; folders have none


def text_words(config) -> tuple[str, ...]:
    """The word vocabulary of the caption tokenizer; () = UTF-8 bytes."""
    return tuple(config.data.text_words.split())


def text_tokenizer(config) -> text_lib.TextTokenizer:
    """The caption tokenizer the config names (data.text_words)."""
    return text_lib.TextTokenizer(text_words(config))


def _image_features(config):
    max_value = sources.image_max_value_of(config.data)
    return data.ImageTextFeatures(
        config.data.text_max_len, image_max_value=max_value, words=text_words(config)
    )


def _audio_features(config):
    return feature_lib.AudioTextFeatures(
        config.data.text_max_len, **config.data.audio, words=text_words(config)
    )


def _video_features(config):
    max_value = sources.image_max_value_of(config.data)
    return feature_lib.VideoTextFeatures(
        config.data.text_max_len,
        max_value=max_value,
        frame_size=config.data.frame_size,
        words=text_words(config),
    )


# Record -> model batch, by the modality of the dataset's non-text field.
FEATURES = {"image": _image_features, "audio": _audio_features, "video": _video_features}


def features(config: ml_collections.ConfigDict):
    """The record -> model-batch transform of the configured dataset."""
    transform = FEATURES[sources.modality_of(config.data)](config)
    if config.data.name == folders.NAME:  # no labels: no "label" in batches
        return folders.WithoutLabel(transform)
    if config.data.name == tfds_sources.NAME and not tfds_sources.spec_of(config.data).has_labels:
        return folders.WithoutLabel(transform)  # captions or transcripts only
    return transform


@lru_cache(maxsize=8)
def _input_shape(config_json: str) -> tuple[int, ...]:
    config = ml_collections.ConfigDict(json.loads(config_json))
    if config.data.name == folders.NAME:  # from the config: sampling needs no training folder
        record = folders.example_record(folders.FolderFormat.from_config(config.data))
    elif config.data.name == tfds_sources.NAME:  # nor the TFDS dataset
        record = tfds_sources.example_record(config.data)
    else:
        record = source(config, "train")[0]
    example = features(config).map(record)
    return tuple(np.asarray(example[task(config).continuous]).shape)


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Shape of one example of the tokenizer's input ([H, W, C], [frames, mels, 1], [T, H, W, C])."""
    return _input_shape(config.to_json())


# Modalities whose features cost more than a training step can wait for (a log-mel spectrogram
# is ~10 ms of NumPy per clip): computed once per run and kept in memory.
PRECOMPUTED = ("audio",)


@lru_cache(maxsize=4)
def _materialized(data_json: str, task_name: str, split: str) -> list[dict]:
    config = ml_collections.ConfigDict({"data": json.loads(data_json), "task": task_name})
    what = f"{config.data.name}/{split} examples"
    return data.materialize(source(config, split), features(config), what=what)


def model_source(config: ml_collections.ConfigDict, split: str):
    """(random-access source, transform to apply) for the pipelines of `split`."""
    if sources.modality_of(config.data) in PRECOMPUTED:
        return _materialized(config.data.to_json(), config.task, split), None
    return source(config, split), features(config)


def train_iterator_factory(config, train_cfg):
    train_source, transform = model_source(config, "train")
    return lambda: data.make_train_iterator(
        train_source,
        global_batch_size=train_cfg.batch_size,
        seed=config.seed,
        transform=transform,
        worker_count=config.data.worker_count,
    )


def test_batches(config, batch_size: int):
    """One ordered pass over the test split, as model batches."""
    test_source, transform = model_source(config, "test")
    return data.make_eval_batches(test_source, batch_size=batch_size, transform=transform)


def fixed_test_batch(config, n: int) -> dict[str, np.ndarray]:
    """The first n test examples: the same inputs in every reconstruction summary."""
    return next(iter(test_batches(config, n)))


def to_pictures(modality: str, x: np.ndarray) -> np.ndarray:
    """Model-space inputs in [-1, 1] -> uint8 pictures [N, H, W, C] people can look at.

    Spectrograms are shown with time left to right and low frequencies at the bottom; videos as
    their frames side by side.
    """
    x = data.unit_to_uint8(x)
    if modality == "audio":  # [N, frames, mels, 1] -> [N, mels, frames, 1]
        x = np.flip(np.swapaxes(x, 1, 2), axis=1)
    elif modality == "video":  # [N, T, H, W, C] -> [N, H, T * W, C]
        n, t, h, w, c = x.shape
        x = np.transpose(x, (0, 2, 1, 3, 4)).reshape(n, h, t * w, c)
    return x


def picture_grid(modality: str, x: np.ndarray, cols: int) -> np.ndarray:
    pictures = to_pictures(modality, x)
    upscale = max(1, MIN_SHOWN_SIDE // min(pictures.shape[1:3]))
    return image_grid(pictures, cols=cols, upscale=upscale)


# ---------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(config: ml_collections.ConfigDict) -> VQVAE:
    shape = input_shape(config)
    m = dict(config.tokenizer.model)
    m["strides"] = tuple(tuple(s) for s in m["strides"])
    return VQVAE(in_channels=shape[-1], spatial_dims=len(shape) - 1, **m)


def latent_grid(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The tokenizer's grid of codes for one example (e.g. (4, 4) for 8x8 digits)."""
    m = config.tokenizer.model
    strides = tuple(tuple(s) for s in m.strides)
    return tuple(latent_shape(input_shape(config)[:-1], m.channel_mult, strides))


def tokenizer_stage(ctx: RunContext) -> StageSpec:
    config = ctx.config
    modality = task(config).continuous
    model = build_tokenizer(config)
    dummy = jnp.zeros((1, *input_shape(config)), jnp.float32)
    shown = fixed_test_batch(config, 8 if modality == "image" else 4)[modality]

    def init_variables(key):
        params_key, vq_key = jax.random.split(key)
        return model.init({"params": params_key, "vq": vq_key}, dummy, train=False)

    # Replicated outputs: every process may read them (multi-host safe).
    reconstruct = jax.jit(lambda v, x: model.apply(v, x, train=False)[0], out_shardings=P())

    def summarize(state, step, writer: MetricWriter):
        variables = {"params": state.params, **state.model_state}
        rec = np.asarray(reconstruct(variables, shown))
        # Top row: inputs; bottom row: reconstructions.
        grid = picture_grid(modality, np.concatenate([shown, rec]), cols=len(shown))
        writer.image(step, "reconstructions", grid)
        if writer.enabled:
            save_png(
                os.path.join(ctx.workdir, "tokenizer", f"reconstructions_{step:06d}.png"), grid
            )

    return StageSpec(
        name="tokenizer",
        train_cfg=config.tokenizer.train,
        init_variables=init_variables,
        objective=vqvae_objective(model, data_key=modality),
        make_iterator=train_iterator_factory(config, config.tokenizer.train),
        summarize=summarize,
    )


def tokenizer_variables(ctx: RunContext) -> dict:
    """The trained tokenizer: from this run's results, or restored from the workdir."""
    state = ctx.results.get("tokenizer")
    if state is None:
        state = restore_stage_state(ctx, "tokenizer", tokenizer_stage(ctx))
        steps = ctx.config.tokenizer.train.steps
        if int(state.step) < steps:  # e.g. its final checkpoint was broken and set aside
            raise UserError(
                f"the tokenizer in {os.path.join(ctx.workdir, 'tokenizer')} is trained to step "
                f"{int(state.step)} of {steps}; add 'tokenizer' to config.stages to finish it"
            )
    return {"params": state.params, "vq_stats": state.model_state["vq_stats"]}


def restore_stage_state(ctx: RunContext, name: str, spec: StageSpec):
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


def generator_stage(ctx: RunContext) -> StageSpec:
    from crossmodal_jax import generator_stages  # imports this module

    return generator_stages.build(ctx)


STAGE_BUILDERS = {"tokenizer": tokenizer_stage, "generator": generator_stage}
