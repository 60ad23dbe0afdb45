"""End-of-run evaluation on the test split, written to metrics.json by run.py: reconstruction
PSNR and codebook health of the tokenizer; digit accuracy and distribution metrics of text→image
samples; BLEU/ROUGE-L/WER/exact match (and digit naming) of X→text captions."""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.evaluation import digits_judge, shapes_judge
from crossmodal_jax.evaluation.image_generation import image_distribution_metrics
from crossmodal_jax.evaluation.text_metrics import digit_naming_accuracy, text_metrics
from crossmodal_jax.evaluation.tokenizer_metrics import reconstruction_metrics
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.pictures import (
    captioned_pictures,
    examples_table,
    picture_grid,
    save_png,
)
from crossmodal_jax.logs.writers import MetricWriter
from crossmodal_jax.stages.generators import sampler
from crossmodal_jax.stages.samplers import generate_in_batches
from crossmodal_jax.stages.tokenizer import tokenizer_variables

log = logging.getLogger("crossmodal_jax")

# Fold-in of the run seed for the evaluation's sampling noise.
_EVAL_SALT = 10**9
_SHOWN = 12  # X→text: inputs shown with their captions in DIR/<split>_captions.png


def generate_for_prompts(exp: Experiment, generator_state, prompts: list[str]) -> np.ndarray:
    """One image per prompt (in order), in [-1, 1], from the run's EMA generator."""
    ids, mask = exp.text.encode_batch(prompts, exp.config.data.text_max_len)
    key = jax.random.fold_in(jax.random.key(exp.config.seed), _EVAL_SALT)
    return generate_in_batches(
        sampler(exp), generator_state, ids, mask, key, exp.config.eval.batch_size
    )


def caption_test_split(
    exp: Experiment, generator_state, split: str = "test", limit: int | None = None
) -> tuple[dict[str, float], list[dict], np.ndarray]:
    """Caption a split (or its first `limit`, by default eval.num_examples) and score the
    captions (`<split>_...`): BLEU, ROUGE-L, WER, CER, exact match; digit naming on the digits
    datasets, the accuracy of each attribute on the shapes world's. Also returns the rows of
    captions and the first inputs."""
    config = exp.config
    generate = sampler(exp)
    key = jax.random.fold_in(jax.random.key(config.seed), _EVAL_SALT)
    hyps, refs, labels, shown = [], [], [], None
    limit = config.eval.num_examples if limit is None else limit
    for i, batch in enumerate(exp.batches(split, config.eval.batch_size, limit=limit)):
        ids = generate(
            generator_state.ema_params,
            generator_state.model_state,
            batch[exp.task.source],
            jax.random.fold_in(key, i),
            batch.get(mask_key(exp.task.source)),  # a padded source's frame mask, or None
        )
        hyps += exp.text.decode_batch(np.asarray(ids))
        if shown is None:  # the first inputs, for the picture of captions
            shown = np.asarray(batch[exp.task.source][:_SHOWN])
        refs += exp.text.decode_batch(batch["text"])
        labels += list(batch["label"]) if "label" in batch else [None] * len(batch["text"])
    multi = {**digits_judge.MULTI_REFERENCES, **shapes_judge.MULTI_REFERENCES}.get(config.data.name)
    references = [multi(r, y) if multi else [r] for r, y in zip(refs, labels, strict=True)]
    metrics = {f"{split}_{k}": v for k, v in text_metrics(hyps, references).items()}
    if labels[0] is not None and exp.dataset.digit_labels:  # which digit each input shows
        metrics[f"{split}_digit_accuracy"] = digit_naming_accuracy(hyps, labels)
    if config.data.name in shapes_judge.DATASETS:
        attributes = shapes_judge.attribute_accuracy(hyps, refs)
        metrics.update({f"{split}_attribute_accuracy/{k}": v for k, v in attributes.items()})
    rows = [
        {"index": i, "text": h, "reference": r}
        for i, (h, r) in enumerate(zip(hyps, refs, strict=True))
    ]
    return metrics, rows, shown


def _write_caption_results(
    exp: Experiment, split: str, metrics: dict, rows: list[dict], shown: np.ndarray
) -> None:
    path = os.path.join(exp.ctx.workdir, f"{split}_captions.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    picture = captioned_pictures(
        exp.task.continuous,
        shown,
        [r["text"] for r in rows[: len(shown)]],
        [r["reference"] for r in rows[: len(shown)]],
    )
    save_png(os.path.join(exp.ctx.workdir, f"{split}_captions.png"), picture)
    table = examples_table(
        [str(r["index"]) for r in rows], [r["text"] for r in rows], [r["reference"] for r in rows]
    )
    writer = MetricWriter(os.path.join(exp.ctx.workdir, "eval"))
    step = int(exp.config.generator.train.steps)
    writer.scalars(step, metrics)
    writer.text(step, f"{split} captions", table)
    writer.close()
    log.info("%s captions (all %d in %s):\n%s", split, len(rows), path, table)


def _image_metrics(exp: Experiment, state) -> dict[str, float]:
    """Text→image: the digit judge's accuracy where it knows the images, a sample grid, and the
    distribution metrics of the test split."""
    config = exp.config
    metrics: dict[str, float] = {}
    per_prompt = config.eval.samples_per_prompt
    if config.data.name in digits_judge.DIGIT_DATASETS:
        prompts, labels = digits_judge.digit_prompts(per_prompt)
        samples = generate_for_prompts(exp, state, prompts)
        data_dir = config.data.data_dir or None
        metrics.update(digits_judge.digit_accuracy(samples, labels, config.data.name, data_dir))
        rows = "'the digit zero' ... 'the digit nine'"
    else:  # a grid of the configured prompts, if any
        prompts = [p for p in config.eval.prompts for _ in range(per_prompt)]
        samples = generate_for_prompts(exp, state, prompts) if prompts else None
        rows = ", ".join(repr(p) for p in config.eval.prompts)
    metrics.update(image_distribution_metrics(exp, state, sampler(exp)))
    if jax.process_index() == 0 and samples is not None:
        path = os.path.join(exp.ctx.workdir, "samples.png")
        save_png(path, picture_grid("image", samples, cols=per_prompt))
        log.info("sample grid (rows: %s): %s", rows, path)
    return metrics


def evaluate_run(exp: Experiment) -> dict[str, float]:
    """Metrics of every trained stage on the test split, and on the `novel` split where the
    dataset has one (the shapes world); writes sample grids or captions."""
    splits = [s for s in ("test", "novel") if s in exp.dataset.splits]
    metrics: dict[str, float] = {}
    if "tokenizer" in exp.results or "generator" in exp.results:
        tok_vars = tokenizer_variables(exp)
        for split in splits:
            metrics.update(reconstruction_metrics(exp, tok_vars, split))
    if "generator" not in exp.results:
        return metrics
    state = exp.results["generator"]
    if not exp.task.generates_text:
        return {**metrics, **_image_metrics(exp, state)}
    for split in splits:
        caption_metrics, rows, shown = caption_test_split(exp, state, split)
        if jax.process_index() == 0:
            _write_caption_results(exp, split, caption_metrics, rows, shown)
        metrics.update(caption_metrics)
    return metrics
