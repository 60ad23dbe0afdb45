"""Evaluation during training (`eval.every` steps): a stage's loss on the first
`eval.every_examples` test examples, and the task's metric on them, from the EMA weights.

The loss is the stage's own objective at fixed keys (the same diffusion times and noise at every
evaluation), so its curve moves only with the weights. The task metric is what the end of the run
reports, on the subset: the tokenizer's PSNR and codebook usage come with its objective; X→text
captions the subset (exact match, WER, ...); text→image draws one image a caption and scores the
draws (the shapes detector's accuracy on the shapes world, the feature classifier's Fréchet
distance and accuracy elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax.evaluation import shapes_judge
from crossmodal_jax.evaluation.evaluate import caption_test_split
from crossmodal_jax.evaluation.image_generation import (
    classifier_metrics,
    generate_split,
    shapes_metrics,
)
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages.generators import sampler
from crossmodal_jax.stages.precompute import codes_converter
from crossmodal_jax.training.stage import StageSpec
from crossmodal_jax.training.step import TrainState, eval_step

_LOSS_SALT = 7 * 10**8  # fold-in of the run seed for the evaluation loss's keys

Evaluator = Callable[[TrainState], dict[str, float]]


def subset_loss(exp: Experiment, spec: StageSpec, limit: int) -> Evaluator:
    """state -> the objective's scalars (loss, psnr, ...) averaged over the subset's examples."""
    size = min(exp.config.eval.batch_size, limit)
    batches = list(exp.batches("test", size, limit=limit))  # small: read once, reused
    if spec.name == "generator" and exp.config.generator.precompute_codes:
        # Shaped like the precomputed training records (stages/precompute.py).
        convert = codes_converter(exp, exp.tokenizer)
        batches = [convert(b) for b in batches]
    step = jax.jit(partial(eval_step, objective=spec.objective), out_shardings=P())
    key = jax.random.fold_in(jax.random.key(exp.config.seed), _LOSS_SALT)

    def evaluate(state: TrainState) -> dict[str, float]:
        totals: dict[str, float] = {}
        count = 0
        for i, batch in enumerate(batches):
            n = len(next(iter(batch.values())))
            metrics = jax.device_get(
                step(state.ema_params, state.model_state, batch, jax.random.fold_in(key, i))
            )
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(np.mean(v)) * n
            count += n
        return {k: v / count for k, v in totals.items() if k != "nonfinite"}

    return evaluate


def task_metric(exp: Experiment, spec: StageSpec, limit: int) -> Evaluator | None:
    """state -> the task's metric on the subset, for a generator stage (None otherwise)."""
    if spec.name != "generator":
        return None  # the tokenizer's objective already reports PSNR and codebook usage
    if exp.task.generates_text:
        return lambda state: caption_test_split(exp, state, "test", limit)[0]
    generate = sampler(exp)

    def images(state: TrainState) -> dict[str, float]:
        real, fake, labels, captions = generate_split(exp, state, generate, "test", limit)
        if exp.config.data.name in shapes_judge.DATASETS:
            return shapes_metrics(exp, "test", real, fake, captions)
        return classifier_metrics(exp, real, fake, labels)

    return images


def periodic_evaluator(exp: Experiment, spec: StageSpec) -> Evaluator:
    """The evaluation `training.loop.fit` runs every `eval.every` steps of this stage."""
    limit = exp.config.eval.every_examples
    loss = subset_loss(exp, spec, limit)
    metric = task_metric(exp, spec, limit)

    def evaluate(state: TrainState) -> dict[str, float]:
        out = {f"test_{k}": v for k, v in loss(state).items()}
        if metric is not None:
            out.update(metric(state))
        return out

    return evaluate
