"""What a generator stage computes once from its frozen tokenizer before training: the scale of
the VQ latents (Gaussian diffusion) and the code ids of every training source (X→text with
generator.precompute_codes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax.data import pipeline
from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages import source_mask
from crossmodal_jax.stages.objectives import (
    TOKENIZER_CODES,
    TOKENIZER_CODES_MASK,
    encode_latents,
    source_code_ids,
)
from crossmodal_jax.stages.tokenizer import tokenizer_variables
from crossmodal_jax.training import sharding

log = logging.getLogger("crossmodal_jax")


def latent_statistics(exp: Experiment, tok_vars: dict, num_batches: int = 8) -> dict:
    """Per-channel mean and one global std of the quantized latents over training batches.

    Diffusion assumes unit-scale data; VQ latents have whatever scale the codebook learned.
    """
    mesh = exp.ctx.mesh
    # The stage's own batches, rounded up to split over the data-parallel devices: equal to them in
    # every run that trains (its batch divides them), and a joint task's mixture rows (4 of a
    # smoke run) restored on more devices (8) still load instead of raising IndivisibleError.
    dp = sharding.data_parallel_size(mesh)
    rows = -(-exp.config.generator.train.batch_size // dp) * dp
    it = exp.train_iterator_factory(ml_collections.ConfigDict(dict(batch_size=rows)))()
    encode = jax.jit(lambda v, x: encode_latents(exp.tokenizer, v, x), out_shardings=P())
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


def codes_converter(exp: Experiment, tokenizer: VQVAE) -> Callable[..., dict]:
    """(batch, pad_to=None) -> {TOKENIZER_CODES, "text", "text_mask"}: the batch as precomputed
    training records hold it, the frozen tokenizer's code ids in place of its continuous modality
    (the objective's code augmentations read them). `pad_to` pads a short last batch to the
    compiled size."""
    tok_vars = tokenizer_variables(exp)
    encode = jax.jit(lambda v, x: source_code_ids(tokenizer, v, x), out_shardings=P())
    source_key = exp.task.continuous

    def convert(batch: dict, pad_to: int | None = None) -> dict:
        frames = batch.get(mask_key(source_key))  # a padded source's frame mask, or None
        x = source_mask.host_canonical(batch[source_key], frames)
        n = len(x)
        ids = encode(tok_vars, pipeline.pad_batch(x, pad_to) if pad_to else x)
        coded = {
            TOKENIZER_CODES: np.asarray(ids)[:n],
            "text": batch["text"],
            "text_mask": batch["text_mask"],
        }
        if frames is not None:  # which codes hold sound travels with them (source_mask.py)
            coded[TOKENIZER_CODES_MASK] = source_mask.host_code_mask(frames, exp.latent_grid)
        return coded

    return convert


def precomputed_codes_iterator_factory(exp: Experiment, tokenizer: VQVAE) -> Callable[[], Any]:
    """Train batches {TOKENIZER_CODES, "text", "text_mask"}: the frozen tokenizer's code ids of every
    training example's continuous modality (the source of X→text, the image of text→image),
    computed once when training starts (generator.precompute_codes).

    Running the tokenizer's encoder inside every step costs more than the small text DiT (speech:
    ~0.2 s of a ~0.25 s step on 2 cores); the codes never change, so compute them once, as DiT
    training on precomputed VAE latents does. Shuffling, sharding and the checkpointed iterator are
    those of every stage (the records are a random-access list, like `data.materialize`).
    """
    config = exp.config
    size = config.eval.batch_size

    def make_iterator():
        convert = codes_converter(exp, tokenizer)
        start, records = time.perf_counter(), []
        for batch in exp.batches("train", size):
            coded = convert(batch, pad_to=size)
            n = len(coded[TOKENIZER_CODES])
            records += [{k: v[i] for k, v in coded.items()} for i in range(n)]
        log.info(
            "[generator] code ids of %d training examples in %.1f s (generator.precompute_codes)",
            len(records),
            time.perf_counter() - start,
        )
        return pipeline.make_train_iterator(
            records,
            global_batch_size=config.generator.train.batch_size,
            seed=config.seed,
            transform=None,
        )

    return make_iterator
