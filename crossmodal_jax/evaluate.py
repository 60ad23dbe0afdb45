"""End-of-run evaluation on the test split: reconstruction PSNR and codebook health of the
tokenizer; digit accuracy of text→image samples; BLEU/ROUGE-L/WER/exact match of X→text captions.

The digit accuracy of text→image samples is judged by an SVC on raw pixels trained on the digits
*train* split (scikit-learn; 95 %+ on the real test split), so it never sees the test images either.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax import data, evaluate_images, generation
from crossmodal_jax.evaluate_text import digit_naming_accuracy, examples_table, text_metrics
from crossmodal_jax.metrics import MetricWriter, save_png
from crossmodal_jax.models.vq import codebook_perplexity, codebook_usage, dead_code_count
from crossmodal_jax.models.vqvae import VQVAE

log = logging.getLogger("crossmodal_jax")


def reconstruction_metrics(
    tokenizer: VQVAE, tok_vars: dict, images: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Per-image PSNR (mean), MSE, and codebook usage/perplexity over the whole split's codes."""

    @partial(jax.jit, out_shardings=P())  # replicated: readable on every process
    def run(x):
        z_e = tokenizer.apply(tok_vars, x, method=VQVAE.encode)
        z_q, idx = tokenizer.apply(tok_vars, z_e, method=VQVAE.quantize)
        rec = tokenizer.apply(tok_vars, z_q, method=VQVAE.decode)
        mse = jnp.mean(jnp.square(rec - x).reshape(x.shape[0], -1), axis=-1)
        return mse, idx

    mses, indices = [], []
    for i in range(0, len(images), batch_size):
        mse, idx = run(images[i : i + batch_size])
        mses.append(np.asarray(mse))
        indices.append(np.asarray(idx).reshape(-1))
    mse = np.concatenate(mses)
    idx = jnp.asarray(np.concatenate(indices))
    k = tokenizer.num_codes
    return {
        "test_psnr_db": float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12)))),
        "test_recon_mse": float(np.mean(mse)),
        "test_codebook_usage": float(codebook_usage(idx, k)),
        "test_codebook_perplexity": float(codebook_perplexity(idx, k)),
        # Codes the EMA considers dead (restart candidates) and codes no test latent uses.
        "dead_codes": float(
            dead_code_count(
                tok_vars["vq_stats"]["quantizer"]["cluster_size"], tokenizer.dead_code_threshold
            )
        ),
        "test_unused_codes": float(k - np.count_nonzero(np.bincount(np.asarray(idx), minlength=k))),
    }


@lru_cache(maxsize=4)
def digit_classifier(name: str, data_dir: str | None):
    """SVC on raw pixels (0..16) of the train split: the judge of generated digits."""
    from sklearn.svm import SVC

    train = data.load_arrays(name, "train", data_dir)
    clf = SVC(gamma=0.001, C=10.0)
    clf.fit(train["image"].reshape(len(train["image"]), -1).astype(np.float64), train["label"])
    return clf


def classify_images(images_unit: np.ndarray, name: str, data_dir: str | None) -> np.ndarray:
    """Predicted digit of images in [-1, 1], mapped back to the dataset's 0..16 ink scale."""
    max_value = data.get_spec(name).image_max_value
    raw = (np.asarray(images_unit, np.float64) + 1.0) * (max_value / 2.0)
    return digit_classifier(name, data_dir).predict(raw.reshape(len(raw), -1))


def digit_prompts(per_digit: int) -> tuple[list[str], np.ndarray]:
    words = data.NUMBER_WORDS
    prompts = [f"the digit {w}" for w in words for _ in range(per_digit)]
    labels = np.repeat(np.arange(len(words)), per_digit)
    return prompts, labels


def generate_for_prompts(ctx, generator_state, prompts: list[str]) -> np.ndarray:
    """One image per prompt (in order), in [-1, 1], from the run's EMA generator."""
    from crossmodal_jax import generator_stages, stages

    config = ctx.config
    generate = generator_stages.image_generator(config)
    ids, mask = stages.text_tokenizer(config).encode_batch(prompts, config.data.text_max_len)
    key = jax.random.fold_in(jax.random.key(config.seed), 10**9)
    return generation.generate_in_batches(
        generate, generator_state, ids, mask, key, config.eval.batch_size
    )


def sample_accuracy(ctx, generator_state, per_digit: int) -> tuple[dict[str, float], np.ndarray]:
    """Generate `per_digit` images for each "the digit <word>" prompt and classify them."""
    config = ctx.config
    prompts, labels = digit_prompts(per_digit)
    images = generate_for_prompts(ctx, generator_state, prompts)
    pred = classify_images(images, config.data.name, config.data.data_dir or None)
    per_class = {
        f"sample_digit_accuracy/{w}": float(np.mean(pred[labels == i] == i))
        for i, w in enumerate(data.NUMBER_WORDS)
    }
    return {"sample_digit_accuracy": float(np.mean(pred == labels)), **per_class}, images


def _digits_references(caption: str, label: int) -> list[str]:
    # Every template is a right caption of a digits image: score against all of them.
    return [t.format(word=data.NUMBER_WORDS[label]) for t in data.CAPTION_TEMPLATES]


# Text→image datasets of the embedded 8×8 digits, judged by the SVC (digit_classifier).
DIGIT_DATASETS = ("digits",)

# Datasets whose examples have several acceptable captions; others use their own caption only.
MULTI_REFERENCES = {"digits": _digits_references}


def caption_test_split(ctx, generator_state) -> tuple[dict[str, float], list[dict]]:
    """Caption the test split (or its first eval.num_examples) and score the captions."""
    from crossmodal_jax import generator_stages, stages

    config = ctx.config
    source_key = stages.task(config).source
    generate = generator_stages.text_generator(config)
    text_tok = stages.text_tokenizer(config)
    key = jax.random.fold_in(jax.random.key(config.seed), 10**9)
    limit = config.eval.num_examples or None
    hyps, refs, labels = [], [], []
    for i, batch in enumerate(stages.test_batches(config, config.eval.batch_size)):
        ids = generate(
            generator_state.ema_params,
            generator_state.model_state,
            batch[source_key],
            jax.random.fold_in(key, i),
        )
        hyps += text_tok.decode_batch(np.asarray(ids))
        refs += text_tok.decode_batch(batch["text"])
        labels += list(batch["label"]) if "label" in batch else [None] * len(batch["text"])
        if limit and len(hyps) >= limit:
            break
    hyps, refs, labels = hyps[:limit], refs[:limit], labels[:limit]
    multi = MULTI_REFERENCES.get(config.data.name)
    references = [multi(r, y) if multi else [r] for r, y in zip(refs, labels, strict=True)]
    metrics = {f"test_{k}": v for k, v in text_metrics(hyps, references).items()}
    if labels[0] is not None and stages.labels_are_digits(config):  # which digit each input shows
        metrics["test_digit_accuracy"] = digit_naming_accuracy(hyps, labels)
    rows = [
        {"index": i, "text": h, "reference": r}
        for i, (h, r) in enumerate(zip(hyps, refs, strict=True))
    ]
    return metrics, rows


def _write_caption_results(ctx, metrics: dict, rows: list[dict]) -> None:
    path = os.path.join(ctx.workdir, "test_captions.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    table = examples_table(
        [str(r["index"]) for r in rows], [r["text"] for r in rows], [r["reference"] for r in rows]
    )
    writer = MetricWriter(os.path.join(ctx.workdir, "eval"))
    step = int(ctx.config.generator.train.steps)
    writer.scalars(step, metrics)
    writer.text(step, "test captions", table)
    writer.close()
    log.info("test captions (all %d in %s):\n%s", len(rows), path, table)


def tokenizer_inputs(config) -> np.ndarray:
    """The test split's tokenizer inputs (images, log-mels or videos) in model space: all of them,
    or the first eval.num_examples."""
    from crossmodal_jax import stages

    key = stages.task(config).continuous
    limit = config.eval.num_examples or None
    inputs = []
    for batch in stages.test_batches(config, config.eval.batch_size):
        inputs.append(batch[key])
        if limit and sum(map(len, inputs)) >= limit:
            break
    return np.concatenate(inputs)[:limit]


def evaluate_run(ctx) -> dict[str, float]:
    """Metrics of every trained stage on the test split; writes sample grids or captions."""
    from crossmodal_jax import stages

    config = ctx.config
    metrics: dict[str, float] = {}
    if "tokenizer" in ctx.results or "generator" in ctx.results:
        metrics.update(
            reconstruction_metrics(
                stages.build_tokenizer(config),
                stages.tokenizer_variables(ctx),
                tokenizer_inputs(config),
                config.eval.batch_size,
            )
        )
    if "generator" not in ctx.results:
        return metrics
    state = ctx.results["generator"]
    if stages.task(config).generates_text:
        caption_metrics, rows = caption_test_split(ctx, state)
        metrics.update(caption_metrics)
        if jax.process_index() == 0:
            _write_caption_results(ctx, caption_metrics, rows)
        return metrics
    per_prompt = config.eval.samples_per_prompt
    if config.data.name in DIGIT_DATASETS:  # the SVC judge knows these images
        acc, samples = sample_accuracy(ctx, state, per_prompt)
        metrics.update(acc)
        rows = "'the digit zero' ... 'the digit nine'"
    else:  # a grid of the configured prompts, if any
        prompts = [p for p in config.eval.prompts for _ in range(per_prompt)]
        samples = generate_for_prompts(ctx, state, prompts) if prompts else None
        rows = ", ".join(repr(p) for p in config.eval.prompts)
    metrics.update(evaluate_images.image_distribution_metrics(ctx, state))
    if jax.process_index() == 0 and samples is not None:
        path = os.path.join(ctx.workdir, "samples.png")
        save_png(path, stages.picture_grid("image", samples, cols=per_prompt))
        log.info("sample grid (rows: %s): %s", rows, path)
    return metrics
