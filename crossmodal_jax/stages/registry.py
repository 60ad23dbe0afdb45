"""The stages a config can name in `config.stages`, trained in the order it names them."""

from __future__ import annotations

from collections.abc import Callable

from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import generators, tokenizer
from crossmodal_jax.training.stage import StageSpec

STAGES: dict[str, Callable[[Experiment], StageSpec]] = {
    tokenizer.NAME: tokenizer.tokenizer_stage,
    generators.NAME: generators.generator_stage,
}
