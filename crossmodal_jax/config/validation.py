"""Config checks that run before anything is compiled or written: one line (UserError) per problem.

- names the run cannot use (task, stage, diffusion process, schedule, ...), with the choices taken
  from the tables that define them (tasks.TASKS, stages.registry.STAGES,
  stages.generators.GENERATORS and PROCESSES);
- combinations that cannot work (batch vs data-parallel size, latent grid vs patch size, a generator
  stage without a tokenizer), checked on the built `Experiment`;
- a workdir that holds a different run (config/workdir.py).
"""

from __future__ import annotations

import os

import jax
import ml_collections

from crossmodal_jax import tasks
from crossmodal_jax.config.workdir import (
    check_data_fingerprint,
    check_workdir,
    checkpointed_stages,
)
from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.diffusion.masked_decoding import MASKED_SAMPLERS
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models import inception_weights
from crossmodal_jax.models.attention import ATTENTION
from crossmodal_jax.models.conditioning import CONDITIONINGS
from crossmodal_jax.models.dit import DIT_LAYOUTS, DIT_PRESETS
from crossmodal_jax.models.lpips import MIN_SIZE
from crossmodal_jax.stages import init_from, latent_precompute
from crossmodal_jax.stages.builders import DTYPES, condition_grid
from crossmodal_jax.stages.generators import PROCESSES, processes_for
from crossmodal_jax.stages.objectives import SOURCE_CONDITIONS
from crossmodal_jax.stages.registry import STAGES
from crossmodal_jax.stages.source_mask import check_padded_source
from crossmodal_jax.training import sharding, throughput


def _check(name: str, value, choices, key: str = "") -> None:
    if value not in choices:
        where = f" ({key})" if key else ""
        raise UserError(f"unknown {name} {value!r}{where}; available: {', '.join(choices)}")


def check_names(config: ml_collections.ConfigDict) -> None:
    """Names in the config alone (before the dataset is opened)."""
    _check("task", config.task, tuple(tasks.TASKS))
    for stage in config.stages:
        _check("stage", stage, tuple(STAGES))
    target = tasks.TASKS[config.task].target
    gen = config.generator
    process = gen.diffusion.process
    _check("diffusion process", process, tuple(PROCESSES))
    if process not in processes_for(target):
        raise UserError(
            f"diffusion process {process!r} cannot generate {target}; use one of "
            f"{', '.join(processes_for(target))}"
        )
    for field, (name, choices) in PROCESSES[process].items():
        block, key = field.split(".")
        _check(name, gen[block][key], choices, key=f"generator.{field}")
    try:
        gaussian.check_guidance_interval(tuple(gen.sample.guidance_interval))
    except (ValueError, TypeError) as e:  # TypeError: not a pair
        raise UserError(f"generator.sample.guidance_interval: {e}") from e
    _check("compute dtype", gen.model.dtype, tuple(DTYPES))
    _check("condition input", gen.model.cond_input, tuple(SOURCE_CONDITIONS))
    key = "generator.model.conditioning"
    _check("DiT conditioning", gen.model.conditioning, tuple(CONDITIONINGS), key=key)
    key = "generator.model.attention"
    _check("attention", gen.model.attention, tuple(ATTENTION), key=key)
    if gen.model.preset:
        _check("DiT preset", gen.model.preset, tuple(DIT_PRESETS))
    _check("DiT layout", gen.model.layout, tuple(DIT_LAYOUTS), key="generator.model.layout")
    _check_init_from(gen)
    _check_monitoring(config)
    weights = config.eval.inception_weights
    random_weights = weights == inception_weights.RANDOM
    if weights and not random_weights and not os.path.isfile(os.path.expanduser(weights)):
        # now, not after hours of training
        raise UserError(f"eval.inception_weights: no such file {weights!r}")
    reference = config.eval.reference_stats
    if reference and not os.path.isfile(os.path.expanduser(reference)):
        raise UserError(f"eval.reference_stats: no such file {reference!r}")
    if config.eval.num_samples < 0 or config.eval.num_samples == 1:
        raise UserError(f"eval.num_samples={config.eval.num_samples}: 0, or at least 2 for FID")


def _check_init_from(gen: ml_collections.ConfigDict) -> None:
    """generator.init_from's keys alone (its checkpoint is checked in check_generator, and read
    at the generator stage's fresh start: stages/init_from.py)."""
    if gen.init_reinit and not gen.init_from:
        raise UserError(
            f"generator.init_reinit={tuple(gen.init_reinit)} names groups to re-initialise over "
            "generator.init_from's checkpoint, and generator.init_from is empty"
        )
    if gen.init_from and gen.diffusion.process == "masked":
        raise UserError(
            f"generator.init_from={gen.init_from!r}: the masked process's DiT over token ids "
            "cannot start from a DiT checkpoint; use the gaussian or flow process"
        )


def _check_monitoring(config: ml_collections.ConfigDict) -> None:
    """The hardware and evaluation-during-training keys."""
    try:
        throughput.parse_profile_steps(config.profile_steps)
    except ValueError as e:
        raise UserError(f"config.profile_steps: {e}") from e
    if config.peak_tflops < 0:
        raise UserError(
            f"config.peak_tflops: must be >= 0 (0 = the device's), got {config.peak_tflops}"
        )
    if config.eval.every < 0 or config.eval.every_examples < 1:
        raise UserError(
            f"config.eval.every must be >= 0 and eval.every_examples >= 1, got "
            f"{config.eval.every} and {config.eval.every_examples}"
        )


def check_data(exp: Experiment) -> None:
    """Both splits open: a bad test file must stop the run now, not after training. Folders are
    validated file by file here, and TFDS datasets opened (prepared?), before anything is
    compiled or written."""
    try:
        for split in ("train", "test"):
            exp.dataset.split(split)
    except (ValueError, RuntimeError) as e:  # a bad dataset, or its builder is missing a tool
        raise UserError(str(e)) from e


def check_batches(exp: Experiment) -> None:
    replicas, processes = sharding.data_parallel_size(exp.ctx.mesh), jax.process_count()
    spanning = sharding.axes_across_processes(exp.ctx.mesh.devices, ("sequence", "tensor"))
    if spanning:
        raise UserError(
            f"mesh axis {spanning[0]!r} spans several processes; keep sequence and tensor "
            "parallelism inside one host (put data or fsdp across hosts: mesh.dcn_shape)"
        )
    train_size = len(exp.dataset.split("train"))
    for stage in exp.config.stages:
        batch = exp.config[stage].train.batch_size
        if batch > train_size:  # a small folder dataset; the pipeline would refuse it mid-run
            raise UserError(
                f"{stage}.train.batch_size={batch} is larger than the training set "
                f"({train_size} examples of {exp.dataset.described})"
            )
        for n, what in (
            (replicas, "data-parallel size (mesh data x fsdp)"),
            (processes, "process count"),
        ):
            if batch % n:
                raise UserError(
                    f"{stage}.train.batch_size={batch} is not divisible by the {what} {n}"
                )


def _grid_text(grid) -> str:
    return "x".join(map(str, grid))


def check_generator(exp: Experiment) -> None:
    """Generator settings that are each valid but cannot work with this data or tokenizer."""
    gen, grid = exp.config.generator, exp.latent_grid
    latent_process = gen.diffusion.process in ("gaussian", "flow")  # the DiT over latent grids
    if latent_process and any(n % gen.model.patch_size for n in grid):
        raise UserError(
            f"the latent grid {_grid_text(grid)} is not divisible by "
            f"generator.model.patch_size={gen.model.patch_size}"
        )
    if exp.text_encoder is not None and gen.diffusion.process == "masked":
        raise UserError(
            f"text_encoder={exp.config.text_encoder!r}: the masked process's DiT conditions on "
            "caption ids; use the gaussian or flow process with a text encoder"
        )
    if exp.config.data.text_classes and (exp.task.name != "text2image" or not latent_process):
        raise UserError(
            "data.text_classes=True conditions a DiT over latents on class labels: it needs "
            f"task 'text2image' and the gaussian or flow process (got {exp.task.name!r}, "
            f"{gen.diffusion.process!r})"
        )
    if gen.latents.precompute and (exp.task.name != "text2image" or not latent_process):
        raise UserError(
            "generator.latents.precompute stores the latents of text→image's gaussian or flow "
            f"process (got {exp.task.name!r}, {gen.diffusion.process!r}); X→text and the masked "
            "process precompute code ids: generator.precompute_codes"
        )
    if gen.latents.precompute:
        latent_precompute.check_settings(gen.latents)
    if gen.latents.precompute and gen.precompute_codes:
        raise UserError(
            "generator.latents.precompute and generator.precompute_codes exclude each other"
        )
    if exp.config.data.text_classes and exp.text_encoder is not None:
        raise UserError("data.text_classes=True and text_encoder exclude each other: choose one")
    if exp.tokenizer.vocab_size == 0:  # a pretrained VAE: latents, no code ids
        if gen.diffusion.process == "masked" and not exp.task.generates_text:
            raise UserError(
                f"tokenizer_from={exp.config.tokenizer_from!r} is a VAE, which has no code ids "
                "for the masked process; use gaussian or flow, or a VQGAN"
            )
        if exp.task.generates_text and gen.model.cond_input == "ids":
            raise UserError(
                f"tokenizer_from={exp.config.tokenizer_from!r} is a VAE, which has no code ids "
                "to condition on; set generator.model.cond_input='vectors'"
            )
    if gen.init_from and "generator" not in checkpointed_stages(exp.ctx.workdir):
        init_from.check_kind(gen.init_from)  # now, not once the tokenizer stage has trained
    if gen.diffusion.process == "flow":
        check_flow(gen)
    if gen.diffusion.process == "masked":
        check_masked_sampler(gen.sample)
    if exp.text.words and gen.diffusion.word_mask_prob:
        raise UserError(
            "generator.diffusion.word_mask_prob masks byte captions word by word; with "
            "data.text_words each token is already a word: set it to 0"
        )
    shift = tuple(gen.source_shift)
    if any(shift) and len(shift) != len(grid):  # the grid has one axis per source axis
        raise UserError(
            f"generator.source_shift={shift} needs {len(grid)} entries, one per axis of "
            f"the {exp.task.source} source"
        )
    if any(s < 0 for s in shift):
        raise UserError(f"generator.source_shift={shift} must not be negative")
    if gen.precompute_codes and any(shift):
        raise UserError(
            "generator.source_shift translates sources the step no longer sees with "
            "generator.precompute_codes; use generator.code_shift (in codes) instead"
        )
    affine = tuple(gen.source_affine)
    if affine and (len(affine) != 2 or any(a < 0 for a in affine)):
        raise UserError(
            f"generator.source_affine={affine} must be (largest angle in degrees, largest "
            "relative scale change), both >= 0"
        )
    if gen.precompute_codes and any(affine):
        raise UserError(
            "generator.source_affine warps sources the step no longer sees with "
            "generator.precompute_codes; turn one of them off"
        )
    codes = tuple(gen.code_shift)
    if any(codes) and not gen.precompute_codes:
        raise UserError("generator.code_shift needs generator.precompute_codes=True")
    if any(codes) and (len(codes) != len(grid) or any(s < 0 for s in codes)):
        raise UserError(
            f"generator.code_shift={codes} needs {len(grid)} non-negative entries, one per "
            f"axis of the code grid {_grid_text(grid)}"
        )
    check_condition_stem(gen.model, grid)


def check_flow(gen: ml_collections.ConfigDict) -> None:
    """Rectified flow's numbers: a logit-normal needs a spread, the time shift must be positive."""
    if gen.diffusion.logit_std <= 0:
        raise UserError(f"generator.diffusion.logit_std={gen.diffusion.logit_std} must be > 0")
    if gen.sample.shift <= 0:
        raise UserError(f"generator.sample.shift={gen.sample.shift} must be > 0")
    if gen.sample.steps < 1:
        raise UserError(f"generator.sample.steps={gen.sample.steps} must be >= 1")


# The numbers a masked sampler may read (diffusion/masked_decoding.py): (valid?, what they must be).
_MASKED_SAMPLE_RANGES = {
    "remask_cap": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "block_size": (lambda v: v >= 1, ">= 1"),
    "threshold": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
}


def check_masked_sampler(sample: ml_collections.ConfigDict) -> None:
    """The options the chosen masked sampler reads, in range (the name is checked by PROCESSES)."""
    options = MASKED_SAMPLERS[sample.sampler].options
    for key, (valid, what) in _MASKED_SAMPLE_RANGES.items():
        if key in options and not valid(sample[key]):
            raise UserError(f"generator.sample.{key}={sample[key]} must be {what}")


def check_condition_stem(m: ml_collections.ConfigDict, grid: tuple[int, ...]) -> None:
    """How an X→text DiT reads the source's code grid: conv stem, its stride, token groups."""
    widths, stride = tuple(m.cond_conv), tuple(m.cond_conv_stride)
    if widths and m.cond_input != "vectors":
        raise UserError("generator.model.cond_conv needs generator.model.cond_input='vectors'")
    if any(w < 1 for w in widths):
        raise UserError(f"generator.model.cond_conv={widths} needs widths >= 1")
    for key in ("cond_conv_kernel", "cond_conv_stride"):
        value = tuple(m[key])
        if value and (len(value) != len(grid) or any(k < 1 for k in value)):
            raise UserError(
                f"generator.model.{key}={value} needs {len(grid)} sizes >= 1, one per axis "
                f"of the source's code grid {_grid_text(grid)}"
            )
    if stride and not widths:
        raise UserError("generator.model.cond_conv_stride needs generator.model.cond_conv")
    if stride and any(n % s for n, s in zip(grid, stride, strict=True)):
        raise UserError(
            f"generator.model.cond_conv_stride={stride} must divide the source's code grid "
            f"{_grid_text(grid)}"
        )
    token_grid = condition_grid(m, grid)
    patch = tuple(m.cond_patch)
    fits = len(patch) == len(grid) and all(
        p >= 1 and n % p == 0 for n, p in zip(token_grid, patch, strict=True)
    )
    if patch and not fits:
        raise UserError(
            f"generator.model.cond_patch={patch} must have one divisor per axis of the "
            f"grid {_grid_text(token_grid)} of the source's codes"
            + (" after generator.model.cond_conv_stride" if stride else "")
        )
    if patch and m.cond_input != "vectors":
        raise UserError("generator.model.cond_patch needs generator.model.cond_input='vectors'")
    if m.cond_mean_pool and m.cond_pool_hidden:
        # The mean of the condition's tokens is the adaLN vector: there is no pooled map to widen.
        raise UserError(
            f"generator.model.cond_pool_hidden={m.cond_pool_hidden} is unused with "
            "generator.model.cond_mean_pool=True: set it to 0, or cond_mean_pool=False"
        )


def check_tokenizer_available(exp: Experiment) -> None:
    workdir = exp.ctx.workdir
    if "tokenizer" not in exp.config.stages and "tokenizer" not in checkpointed_stages(workdir):
        raise UserError(
            f"the generator stage needs a trained tokenizer: "
            f"{os.path.join(workdir, 'tokenizer', 'checkpoints')} has no checkpoint; add "
            "'tokenizer' to config.stages"
        )


def check_perceptual(exp: Experiment) -> None:
    """The LPIPS term needs its weights file and RGB-like images large enough for VGG16."""
    path = exp.config.tokenizer.adversarial.perceptual_weights
    if not path or "tokenizer" not in exp.config.stages:
        return
    key = "tokenizer.adversarial.perceptual_weights"
    if not os.path.isfile(path):
        raise UserError(f"{key}={path!r}: no such file")
    if exp.task.continuous != "image" or min(exp.input_shape[:2]) < MIN_SIZE:
        raise UserError(
            f"{key}: LPIPS (VGG16) scores images of at least {MIN_SIZE}x{MIN_SIZE}; this "
            f"tokenizer's inputs are {exp.task.continuous} of shape {exp.input_shape}"
        )


def validate(exp: Experiment, tokenizer_elsewhere: bool = False) -> None:
    """Every check of a built experiment, in the order a user would want to hear about them
    (`check_names` runs before the experiment is built). `tokenizer_elsewhere`: the experiment
    borrows another's tokenizer (a joint run's `tokenizer_of`), checked there."""
    check_data(exp)
    check_batches(exp)
    check_perceptual(exp)
    check_padded_source(exp.config)
    if "generator" in exp.config.stages:
        check_generator(exp)
        if not tokenizer_elsewhere:
            check_tokenizer_available(exp)
    check_workdir(exp.config, exp.ctx.workdir)
    check_data_fingerprint(exp.dataset, exp.ctx.workdir, exp.config.data.allow_changed_data)
