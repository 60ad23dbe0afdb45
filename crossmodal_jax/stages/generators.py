"""The generator stage: a DiT trained by diffusion to produce the task's target, one entry per
(diffusion process, target modality) in `GENERATORS`:

- ("gaussian", "image"): Gaussian diffusion over the frozen tokenizer's normalized VQ latents;
- ("flow", "image"):     rectified flow over the same latents (same DiT, data and summaries);
- ("masked", "image"):   masked diffusion over the tokenizer's code ids, conditioned on captions;
- ("masked", "text"):    masked diffusion over caption tokens, conditioned on the source's codes.

Each entry gives the stage (model, objective, data, summaries) and the jitted sampler that training
summaries, evaluation and the sample CLI share. `PROCESSES` lists each process's named choices,
which config validation checks. The frozen tokenizer rides along in `model_state["tokenizer"]`,
so the step stays pure and the tokenizer is sharded and checkpointed like everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from crossmodal_jax.config.workdir import checkpointed_stages
from crossmodal_jax.data import text as text_tok
from crossmodal_jax.diffusion import flow, flow_samplers, gaussian, masked, masked_decoding
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import builders, init_from, latent_precompute, summaries
from crossmodal_jax.stages.augment import code_shift, compose, source_affine, source_shift
from crossmodal_jax.stages.flow_sampler import make_flow_image_generator
from crossmodal_jax.stages.objectives import (
    TOKENIZER_CODES,
    flow_matching_objective,
    gaussian_diffusion_objective,
    masked_diffusion_objective,
    text_tokens,
    vq_tokens,
)
from crossmodal_jax.stages.precompute import latent_statistics, precomputed_codes_iterator_factory
from crossmodal_jax.stages.samplers import (
    SAMPLERS,
    make_image_generator,
    make_masked_image_generator,
    make_text_generator,
)
from crossmodal_jax.stages.tokenizer import tokenizer_variables
from crossmodal_jax.training.stage import StageSpec
from crossmodal_jax.training.step import Objective

NAME = "generator"


def _stage(exp: Experiment, **fields) -> StageSpec:
    return StageSpec(name=NAME, train_cfg=exp.config.generator.train, **fields)


# ---------------------------------------------------------------------- Gaussian or flow, image


def latent_image_stage(exp: Experiment, objective: Objective) -> StageSpec:
    """A DiT over the frozen tokenizer's normalized latents, trained by `objective`: what the
    Gaussian and flow processes share (latent statistics, model, data, sample grids)."""
    frozen = {"tokenizer": tokenizer_variables(exp)}
    make_iterator = exp.train_iterator_factory(exp.config.generator.train)
    if exp.config.generator.latents.precompute:  # encoded once, read from disk
        restored = NAME in checkpointed_stages(exp.ctx.workdir)
        frozen["latents"], make_iterator = latent_precompute.stored_latents(
            exp, frozen["tokenizer"], restored
        )
    else:
        frozen["latents"] = latent_statistics(exp, frozen["tokenizer"])
    if exp.text_encoder is not None:  # frozen, sharded and checkpointed like the tokenizer
        frozen["text_encoder"] = exp.text_encoder.variables
    dit = builders.build_dit(exp)

    def init_variables(key):
        return dit.init(key, *builders.example_inputs(exp, dit))

    if exp.config.generator.precompute_codes:
        make_iterator = precomputed_codes_iterator_factory(exp, exp.tokenizer)
    return _stage(
        exp,
        init_variables=init_variables,
        init_params=init_from.init_params(exp, dit),  # generator.init_from: a DiT checkpoint
        objective=objective,
        make_iterator=make_iterator,
        frozen_state=frozen,
        summarize=summaries.image_summary(exp, sampler(exp)),
    )


def gaussian_objective(exp: Experiment, tokenizer) -> Callable:
    """The generator's Gaussian-diffusion loss as the config says; `tokenizer` None when every
    batch holds precomputed latents (benchmarks/scale_cases.py's memory plans)."""
    diff = exp.config.generator.diffusion
    return gaussian_diffusion_objective(
        builders.build_dit(exp),
        tokenizer,
        gaussian.make_schedule(diff.schedule, diff.timesteps),
        prediction=diff.prediction,
        cond_drop=diff.cond_drop,
        weighting=diff.loss_weighting,
        min_snr_gamma=diff.min_snr_gamma,
        condition=builders.caption_condition(exp),
    )


def gaussian_image_stage(exp: Experiment) -> StageSpec:
    return latent_image_stage(exp, gaussian_objective(exp, exp.tokenizer))


def gaussian_image_sampler(exp: Experiment) -> Callable:
    diff = exp.config.generator.diffusion
    return make_image_generator(
        builders.build_dit(exp),
        exp.tokenizer,
        gaussian.make_schedule(diff.schedule, diff.timesteps),
        exp.config.generator.sample,
        prediction=diff.prediction,
        latent_hwc=builders.latent_hwc(exp),
        condition=builders.caption_condition(exp),
    )


def flow_image_stage(exp: Experiment) -> StageSpec:
    diff = exp.config.generator.diffusion
    objective = flow_matching_objective(
        builders.build_dit(exp),
        exp.tokenizer,
        time_sampling=diff.time_sampling,
        logit_mean=diff.logit_mean,
        logit_std=diff.logit_std,
        cond_drop=diff.cond_drop,
        condition=builders.caption_condition(exp),
    )
    return latent_image_stage(exp, objective)


def flow_image_sampler(exp: Experiment) -> Callable:
    return make_flow_image_generator(
        builders.build_dit(exp),
        exp.tokenizer,
        exp.config.generator.sample,
        latent_hwc=builders.latent_hwc(exp),
        condition=builders.caption_condition(exp),
    )


# ------------------------------------------------------------------------ masked, image or text


def masked_stage(exp: Experiment) -> StageSpec:
    """Masked diffusion over token ids: captions from source codes, or codes from captions."""
    gen = exp.config.generator
    dit = builders.build_token_dit(exp)
    augment = None
    make_iterator = exp.train_iterator_factory(gen.train)
    if exp.task.generates_text:
        target, condition, mask_id = text_tokens(), builders.source_condition(exp), text_tok.MASK_ID
        summarize = summaries.text_summary(exp, sampler(exp))
        augment = compose(
            source_shift(exp.task.source, gen.source_shift),
            source_affine(exp.task.source, *gen.source_affine),
        )
        if gen.precompute_codes:
            augment = code_shift(TOKENIZER_CODES, gen.code_shift)
    else:
        target = vq_tokens(exp.tokenizer, exp.task.continuous)
        condition, mask_id = text_tokens(), exp.tokenizer.vocab_size
        summarize = summaries.image_summary(exp, sampler(exp))
    if gen.precompute_codes:
        make_iterator = precomputed_codes_iterator_factory(exp, exp.tokenizer)

    def init_variables(key):
        return dit.init(key, *builders.example_inputs(exp, dit))

    objective = masked_diffusion_objective(
        dit,
        masked.make_mask_schedule(gen.diffusion.schedule),
        mask_id=mask_id,
        target=target,
        condition=condition,
        cond_drop=gen.diffusion.cond_drop,
        weighting=gen.diffusion.loss_weighting,
        augment=augment,
        word_mask_prob=gen.diffusion.word_mask_prob if exp.task.generates_text else 0.0,
    )
    return _stage(
        exp,
        init_variables=init_variables,
        objective=objective,
        make_iterator=make_iterator,
        frozen_state={"tokenizer": tokenizer_variables(exp)},
        summarize=summarize,
    )


def masked_image_sampler(exp: Experiment) -> Callable:
    return make_masked_image_generator(
        builders.build_token_dit(exp),
        exp.tokenizer,
        exp.config.generator.sample,
        code_grid=exp.code_grid,
    )


def text_sampler(exp: Experiment) -> Callable:
    return make_text_generator(
        builders.build_token_dit(exp),
        exp.config.generator.sample,
        text_len=exp.config.data.text_max_len,
        source_key=exp.task.source,
        condition=builders.source_condition(exp),
        forbidden_ids=exp.text.unused_ids,
    )


# ----------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Generator:
    stage: Callable[[Experiment], StageSpec]
    # The jitted sampler. text→image: fn(params, model_state, caption ids, mask, key) -> images
    # in [-1, 1]; X→text: fn(params, model_state, source, key) -> caption ids.
    sampler: Callable[[Experiment], Callable]


GENERATORS: dict[tuple[str, str], Generator] = {
    ("gaussian", "image"): Generator(gaussian_image_stage, gaussian_image_sampler),
    ("flow", "image"): Generator(flow_image_stage, flow_image_sampler),
    ("masked", "image"): Generator(masked_stage, masked_image_sampler),
    ("masked", "text"): Generator(masked_stage, text_sampler),
}

# Per process, the config fields (generator.<block>.<key>) that name a choice: (what the error
# message calls it, the choices).
PROCESSES: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "gaussian": {
        "diffusion.schedule": ("noise schedule", tuple(gaussian.SCHEDULES)),
        "diffusion.prediction": ("prediction", tuple(gaussian.PREDICTIONS)),
        "diffusion.loss_weighting": ("loss weighting", gaussian.LOSS_WEIGHTINGS),
        "sample.sampler": ("sampler", tuple(SAMPLERS)),
    },
    "masked": {
        "diffusion.schedule": ("masking schedule", tuple(masked.MASK_SCHEDULES)),
        "diffusion.loss_weighting": ("loss weighting", tuple(masked.LOSS_WEIGHTINGS)),
        "sample.schedule": ("sampling schedule", tuple(masked.MASK_SCHEDULES)),
        "sample.sampler": ("sampler", tuple(masked_decoding.MASKED_SAMPLERS)),
    },
    "flow": {
        "diffusion.time_sampling": ("flow time sampling", flow.TIME_SAMPLINGS),
        "sample.sampler": ("flow sampler", tuple(flow_samplers.SAMPLERS)),
    },
}


def processes_for(target: str) -> tuple[str, ...]:
    """The diffusion processes that can generate `target` ("image" | "text")."""
    return tuple(p for p, t in GENERATORS if t == target)


def generator_entry(exp: Experiment) -> Generator:
    return GENERATORS[(exp.config.generator.diffusion.process, exp.task.target)]


def generator_stage(exp: Experiment) -> StageSpec:
    return generator_entry(exp).stage(exp)


def sampler(exp: Experiment, *, rebuild: bool = False) -> Callable:
    """The experiment's jitted sampler, built once: training summaries, the final evaluation and
    the sample CLI call the same compiled function (batches padded to one shape). `rebuild=True`
    builds it anew from the config's current `generator.sample` (sweeps that change it)."""
    if rebuild or "sampler" not in exp.built:
        exp.built["sampler"] = generator_entry(exp).sampler(exp)
    return exp.built["sampler"]
