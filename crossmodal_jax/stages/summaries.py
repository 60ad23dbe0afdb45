"""What a generator shows while it trains: sample grids of the configured prompts (text→image), or
captions of a few fixed test inputs beside their references (X→text)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import jax
import numpy as np

from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.pictures import examples_table, picture_grid, save_png
from crossmodal_jax.logs.writers import MetricWriter
from crossmodal_jax.stages.samplers import generate_in_batches

log = logging.getLogger("crossmodal_jax")

Summary = Callable[[object, int, MetricWriter], None]  # (state, step, writer)


def image_summary(exp: Experiment, generate: Callable) -> Summary:
    """Sample grids of the configured prompts: TensorBoard per prompt, a PNG per summary step."""
    config = exp.config
    prompts = list(config.eval.prompts)
    n = config.eval.samples_per_prompt
    ids, mask = exp.text.encode_batch(
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
            save_png(os.path.join(exp.ctx.workdir, "generator", f"samples_{step:06d}.png"), grid)
            writer.text(
                step, "sample grid rows", "\n".join(f"{i}: {p}" for i, p in enumerate(prompts))
            )

    return summarize


def text_summary(exp: Experiment, generate: Callable) -> Summary:
    """Captions of a few fixed test inputs beside their references, in TensorBoard and the log."""
    shown = exp.first_examples("test", 8)
    source = shown[exp.task.source]
    frames = shown.get(mask_key(exp.task.source))  # a padded source's frame mask, or None
    references = exp.text.decode_batch(shown["text"])

    def summarize(state, step, writer: MetricWriter):
        key = jax.random.fold_in(jax.random.key(exp.config.seed), step)
        captions = exp.text.decode_batch(
            np.asarray(generate(state.ema_params, state.model_state, source, key, frames))
        )
        table = examples_table([str(i) for i in range(len(captions))], captions, references)
        writer.text(step, "captions", table)
        if writer.enabled:
            log.info("generator step %d captions: %s", step, " | ".join(captions[:4]))

    return summarize
