"""The `Experiment`: what a config means, derived once and passed down.

`Experiment.build(config, ctx)` resolves the task, its modalities, the dataset, the caption
tokenizer, the tokenizer model, the model input shape and the latent grid. Stages, evaluation and
the sample CLI read them from here instead of re-deriving them from the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from crossmodal_jax import pretrained, tasks
from crossmodal_jax.data import catalog, pipeline
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.modalities import MODALITIES, Modality
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.quantizers import check_spec
from crossmodal_jax.models.vqvae import VQVAE, latent_shape, vqvae_from_config
from crossmodal_jax.pretrained.as_text import PretrainedText, load_text_encoder
from crossmodal_jax.pretrained.as_tokenizer import PretrainedTokenizer, load_tokenizer
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import RunContext
from crossmodal_jax.training.step import frozen_state


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """A frozen pretrained text encoder: its module, its variables and its hidden width."""

    module: Any
    variables: dict
    width: int


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    ctx: RunContext  # workdir, mesh, logical axis rules, seed
    task: tasks.Task
    dataset: catalog.Dataset
    # The caption tokenizer (data.text_words; () = UTF-8 bytes), or a pretrained text encoder's.
    text: text_lib.TextTokenizer | PretrainedText
    features: grain.transforms.Map  # record -> model batch
    input_shape: tuple[int, ...]  # one tokenizer input: [H, W, C], [frames, mels, 1], [T, H, W, C]
    latent_grid: tuple[int, ...]  # the tokenizer's grid of codes for one input, e.g. (4, 4)
    # The stage-1 model of the continuous modality: our VQ-VAE, or a pretrained VQGAN/VAE with
    # its interface (tokenizer_from a checkpoint; its frozen weights are results["tokenizer"]).
    tokenizer: VQVAE | PretrainedTokenizer
    results: dict = dataclasses.field(default_factory=dict)  # stage name -> its final TrainState
    # A pretrained text encoder whose hidden states condition the generator (config.text_encoder;
    # `text` is then its tokenizer), frozen; None: caption ids condition it.
    text_encoder: TextEncoder | None = None
    # The model the generator stage uses instead of the one its config describes: this task's
    # view of a joint model (stages/joint.py), whose trunk other tasks share.
    generator_model: Any = None
    # Pieces the layers above build once per experiment (the generator's jitted sampler, shared
    # by training summaries and the final evaluation: one compilation).
    built: dict = dataclasses.field(default_factory=dict)
    _materialized: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, ctx: RunContext) -> Experiment:
        """UserError (one line) for a dataset, vocabulary or tokenizer the config cannot have."""
        task = tasks.get_task(config.task)
        dataset = catalog.open_dataset(config.data)
        if dataset.modality != task.continuous:
            raise UserError(
                f"task {task.name!r} needs a dataset of {task.continuous}s, but "
                f"{dataset.described} holds {dataset.modality}s"
            )
        text_encoder = None
        if config.text_encoder:  # captions through a pretrained encoder and its tokenizer
            if task.source != "text":
                raise UserError(
                    f"text_encoder={config.text_encoder!r}: task {task.name!r} has no caption "
                    "condition (text_encoder conditions text→image)"
                )
            module, variables, text, width = load_text_encoder(
                config.text_encoder, ctx.mesh, ctx.rules
            )
            text_encoder = TextEncoder(module, variables, width)
        elif config.data.text_classes:  # a class-conditional generator
            if dataset.class_captions is None:
                raise UserError(
                    f"data.text_classes=True needs a dataset with class labels; "
                    f"{dataset.described} has none"
                )
            text = text_lib.ClassTokenizer(dataset.class_captions())
        else:
            try:
                text = text_lib.TextTokenizer(tuple(config.data.text_words.split()))
            except ValueError as e:
                raise UserError(f"data.text_words: {e}") from e
        features = dataset.features(text)
        example = features.map(dataset.example_record())
        input_shape = tuple(np.asarray(example[task.continuous]).shape)
        source = config.tokenizer_from
        if source and pretrained.is_checkpoint(source):  # a pretrained tokenizer, frozen
            tokenizer, variables, grid = load_tokenizer(source, input_shape, ctx.mesh, ctx.rules)
            exp = cls(config, ctx, task, dataset, text, features, input_shape, grid, tokenizer)
            exp.results["tokenizer"] = frozen_state(variables)
            exp.text_encoder = text_encoder
            return exp
        m = config.tokenizer.model
        try:
            grid = tuple(latent_shape(input_shape[:-1], m.channel_mult, m.strides))
        except ValueError as e:
            raise UserError(f"tokenizer.model: {e}") from e
        problem = check_spec(config.tokenizer.model)
        if problem:
            raise UserError(f"tokenizer.model.{problem}")
        tokenizer = vqvae_from_config(
            m, in_channels=input_shape[-1], spatial_dims=len(input_shape) - 1
        )
        exp = cls(config, ctx, task, dataset, text, features, input_shape, grid, tokenizer)
        exp.text_encoder = text_encoder
        return exp

    @property
    def code_grid(self) -> tuple[int, ...]:
        """Shape of one input's code ids: the latent grid, plus an axis of residual stages."""
        depth = self.tokenizer.code_depth
        return self.latent_grid if depth == 1 else (*self.latent_grid, depth)

    @property
    def modality(self) -> Modality:
        """The continuous modality: what the tokenizer learns (batch key `modality.name`)."""
        return MODALITIES[self.task.continuous]

    def source(self, split: str) -> tuple[Any, grain.transforms.Map | None]:
        """(random-access source, transform still to apply) of a split's model examples."""
        if not (self.modality.precompute and self.modality.in_memory(self.config.data)):
            return self.dataset.split(split), self.features
        if split not in self._materialized:  # computed once per experiment
            self._materialized[split] = pipeline.materialize(
                self.dataset.split(split),
                self.features,
                what=f"{self.config.data.name}/{split} examples",
            )
        return self._materialized[split], None

    def train_iterator_factory(self, train_cfg: ml_collections.ConfigDict) -> Callable[[], Any]:
        """() -> a checkpointable iterator of this process's training batches."""
        train_source, transform = self.source("train")
        return lambda: pipeline.make_train_iterator(
            train_source,
            global_batch_size=train_cfg.batch_size,
            seed=self.config.seed,
            transform=transform,
            worker_count=self.config.data.worker_count,
        )

    def batches(self, split: str, batch_size: int, limit: int = 0) -> Iterator[dict[str, Any]]:
        """One ordered pass over the first `limit` examples of a split (0 = all), as model batches:
        the one way evaluation, summaries and code precomputation read a split."""
        split_source, transform = self.source(split)
        return pipeline.make_eval_batches(
            split_source, batch_size=batch_size, transform=transform, limit=limit
        )

    def first_examples(self, split: str, n: int) -> dict[str, np.ndarray]:
        """The first n examples of a split: the same inputs in every summary of a run."""
        return next(self.batches(split, n, limit=n))


def local_experiment(
    config: ml_collections.ConfigDict, workdir: str = "", devices: Sequence[Any] | None = None
) -> Experiment:
    """The Experiment of a config on this process's devices (or `devices`), data-parallel,
    without the run's validation: for the sample CLI, benchmarks and notebooks that load a
    trained workdir."""
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    rules = sharding.rules_from_config(config.mesh.rules)
    return Experiment.build(config, RunContext(workdir, mesh, rules, config.seed))
