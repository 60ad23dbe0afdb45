"""Config checks that run before anything is compiled or written: one line (UserError) per problem.

- names the run cannot use (task, stage, dataset, schedule, ...);
- combinations that cannot work (batch vs data-parallel size, latent grid vs patch size, a generator
  stage without a tokenizer);
- a workdir that holds a different run: refused with a short diff unless only safe keys changed.
"""

from __future__ import annotations

import fnmatch
import json
import os

import jax
import ml_collections

from crossmodal_jax import sharding, stages, tasks
from crossmodal_jax.data import folders, sources, tfds_sources
from crossmodal_jax.diffusion import gaussian, masked
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.dit import DIT_PRESETS
from crossmodal_jax.objectives import SOURCE_CONDITIONS

# Keys a resumed run may change: which stages run, how long, how it logs, evaluates and samples, and
# on which mesh (checkpoints restore onto any mesh). Everything else changes what is trained.
SAFE_KEYS = (
    "stages",
    "*.train.steps",
    "*.train.log_every",
    "*.train.images_every",
    "*.train.checkpoint_every",
    "*.train.keep_checkpoints",
    "*.train.skip_nonfinite",
    "eval.*",
    "generator.sample.*",
    "data.worker_count",
    "data.data_dir",
    "mesh.shape.*",
)


def _check(name: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; available: {', '.join(choices)}")


def check_names(config: ml_collections.ConfigDict) -> None:
    _check("task", config.task, stages.TASKS)
    for stage in config.stages:
        _check("stage", stage, stages.STAGE_BUILDERS)
    task = stages.task(config)
    try:
        modality = sources.modality_of(config.data)
    except ValueError as e:  # unknown dataset
        raise UserError(str(e)) from e
    if modality != task.continuous:
        named = f"data.name={config.data.name!r}"
        if config.data.name == tfds_sources.NAME:
            named = f"data.tfds_name={config.data.tfds_name!r}"
        raise UserError(
            f"task {task.name!r} needs a dataset of {task.continuous}s, but {named} holds "
            f"{modality}s"
        )
    converted = config.data.name in (folders.NAME, tfds_sources.NAME)  # frames to image_size
    if converted and modality == "video" and config.data.frame_size:
        if config.data.image_size % config.data.frame_size:
            raise UserError(
                f"data.image_size={config.data.image_size} is not a multiple of "
                f"data.frame_size={config.data.frame_size}"
            )
    try:
        # Both splits: a bad test file must stop the run now, not after training. Folders are
        # validated file by file here, and TFDS datasets opened (prepared?), before anything is
        # compiled or written.
        for split in ("train", "test"):
            stages.source(config, split)
    except (ValueError, RuntimeError) as e:  # a bad dataset, or its builder is missing a tool
        raise UserError(str(e)) from e
    diff, sample = config.generator.diffusion, config.generator.sample
    _check("diffusion process", diff.process, stages.DIFFUSION_PROCESSES)
    if diff.process not in tasks.PROCESSES_BY_TARGET[task.target]:
        raise UserError(
            f"diffusion process {diff.process!r} cannot generate {task.target}; use one of "
            f"{', '.join(tasks.PROCESSES_BY_TARGET[task.target])}"
        )
    if diff.process == "gaussian":
        _check("noise schedule", diff.schedule, gaussian.SCHEDULES)
        _check("prediction", diff.prediction, gaussian.PREDICTIONS)
        _check("sampler", sample.sampler, ("ddim", "ddpm"))
    else:
        _check("masking schedule", diff.schedule, masked.MASK_SCHEDULES)
        _check("loss weighting", diff.loss_weighting, masked.LOSS_WEIGHTINGS)
        _check("sampling schedule", sample.schedule, masked.MASK_SCHEDULES)
        _check("sampler", sample.sampler, ("maskgit",))
    _check("compute dtype", config.generator.model.dtype, ("float32", "bfloat16"))
    _check("condition input", config.generator.model.cond_input, SOURCE_CONDITIONS)
    if config.generator.model.preset:
        _check("DiT preset", config.generator.model.preset, DIT_PRESETS)
    weights = config.eval.inception_weights
    if weights and not os.path.isfile(os.path.expanduser(weights)):  # not after hours of training
        raise UserError(f"eval.inception_weights: no such file {weights!r}")


def check_combinations(config: ml_collections.ConfigDict, mesh, workdir: str) -> None:
    """Settings that are each valid but cannot work together."""
    try:
        words = stages.text_tokenizer(config).words
    except ValueError as e:
        raise UserError(f"data.text_words: {e}") from e
    replicas, processes = sharding.data_parallel_size(mesh), jax.process_count()
    train_size = len(stages.source(config, "train"))  # cached by check_names
    for stage in config.stages:
        batch = config[stage].train.batch_size
        if batch > train_size:  # a small folder dataset; the pipeline would refuse it mid-run
            raise UserError(
                f"{stage}.train.batch_size={batch} is larger than the training set "
                f"({train_size} examples of data.name={config.data.name!r})"
            )
        for n, what in (
            (replicas, "data-parallel size (mesh data x fsdp)"),
            (processes, "process count"),
        ):
            if batch % n:
                raise UserError(
                    f"{stage}.train.batch_size={batch} is not divisible by the {what} {n}"
                )
    try:
        grid = stages.latent_grid(config)
    except ValueError as e:
        raise UserError(f"tokenizer.model: {e}") from e
    if "generator" in config.stages:
        p = config.generator.model.patch_size
        if config.generator.diffusion.process == "gaussian" and any(n % p for n in grid):
            raise UserError(
                f"the latent grid {'x'.join(map(str, grid))} is not divisible by "
                f"generator.model.patch_size={p}"
            )
        if words and config.generator.diffusion.get("word_mask_prob", 0.0):
            raise UserError(
                "generator.diffusion.word_mask_prob masks byte captions word by word; with "
                "data.text_words each token is already a word: set it to 0"
            )
        shift = tuple(config.generator.get("source_shift", ()))
        source_axes = len(grid)  # the tokenizer's grid has one axis per source axis
        if any(shift) and len(shift) != source_axes:
            raise UserError(
                f"generator.source_shift={shift} needs {source_axes} entries, one per axis of "
                f"the {stages.task(config).source} source"
            )
        if any(s < 0 for s in shift):
            raise UserError(f"generator.source_shift={shift} must not be negative")
        precompute = config.generator.get("precompute_codes", False)
        if precompute and any(shift):
            raise UserError(
                "generator.source_shift translates sources the step no longer sees with "
                "generator.precompute_codes; use generator.code_shift (in codes) instead"
            )
        affine = tuple(config.generator.get("source_affine", ()))
        if affine and (len(affine) != 2 or any(a < 0 for a in affine)):
            raise UserError(
                f"generator.source_affine={affine} must be (largest angle in degrees, largest "
                "relative scale change), both >= 0"
            )
        if precompute and any(affine):
            raise UserError(
                "generator.source_affine warps sources the step no longer sees with "
                "generator.precompute_codes; turn one of them off"
            )
        codes = tuple(config.generator.get("code_shift", ()))
        if any(codes) and not precompute:
            raise UserError("generator.code_shift needs generator.precompute_codes=True")
        if any(codes) and (len(codes) != len(grid) or any(s < 0 for s in codes)):
            raise UserError(
                f"generator.code_shift={codes} needs {len(grid)} non-negative entries, one per "
                f"axis of the code grid {'x'.join(map(str, grid))}"
            )
        m = config.generator.model
        widths = tuple(m.get("cond_conv", ()))
        kernel = tuple(m.get("cond_conv_kernel", ()))
        stride = tuple(m.get("cond_conv_stride", ()))
        if widths and m.cond_input != "vectors":
            raise UserError("generator.model.cond_conv needs generator.model.cond_input='vectors'")
        if any(w < 1 for w in widths):
            raise UserError(f"generator.model.cond_conv={widths} needs widths >= 1")
        for key, value in (("cond_conv_kernel", kernel), ("cond_conv_stride", stride)):
            if value and (len(value) != len(grid) or any(k < 1 for k in value)):
                raise UserError(
                    f"generator.model.{key}={value} needs {len(grid)} sizes >= 1, one per axis "
                    f"of the source's code grid {'x'.join(map(str, grid))}"
                )
        if stride and not widths:
            raise UserError("generator.model.cond_conv_stride needs generator.model.cond_conv")
        if stride and any(n % s for n, s in zip(grid, stride, strict=True)):
            raise UserError(
                f"generator.model.cond_conv_stride={stride} must divide the source's code grid "
                f"{'x'.join(map(str, grid))}"
            )
        # The DiT's condition tokens group the code grid, or the stem's grid after its stride.
        token_grid = [n // s for n, s in zip(grid, stride or (1,) * len(grid), strict=True)]
        patch = tuple(m.get("cond_patch", ()))
        fits = len(patch) == len(grid) and all(
            p >= 1 and n % p == 0 for n, p in zip(token_grid, patch, strict=True)
        )
        if patch and not fits:
            raise UserError(
                f"generator.model.cond_patch={patch} must have one divisor per axis of the "
                f"grid {'x'.join(map(str, token_grid))} of the source's codes"
                + (" after generator.model.cond_conv_stride" if stride else "")
            )
        if patch and m.cond_input != "vectors":
            raise UserError("generator.model.cond_patch needs generator.model.cond_input='vectors'")
        tok_ckpts = os.path.join(workdir, "tokenizer", "checkpoints")
        if "tokenizer" not in config.stages and "tokenizer" not in checkpointed_stages(workdir):
            raise UserError(
                f"the generator stage needs a trained tokenizer: {tok_ckpts} has no "
                "checkpoint; add 'tokenizer' to config.stages"
            )


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Keys whose values differ (JSON-normalised), excluding SAFE_KEYS."""
    a, b = _flatten(old), _flatten(json.loads(json.dumps(new)))
    changed = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<missing>") != b.get(key, "<missing>") and not any(
            fnmatch.fnmatch(key, pattern) for pattern in SAFE_KEYS
        ):
            changed.append(f"{key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return changed


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse to resume a workdir that was trained with a different config, or whose checkpoints
    cannot be checked against this config (config.json deleted or unreadable)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        trained = checkpointed_stages(workdir)
        if trained:
            raise UserError(
                f"workdir {workdir} holds {', '.join(trained)} checkpoints but no config.json to "
                "check this config against; restore config.json or use a new --workdir"
            )
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(
            f"workdir {workdir}: config.json is unreadable ({e}); use a new --workdir"
        ) from e
    changed = config_diff(old, json.loads(config.to_json_best_effort()))
    if changed:
        shown = "; ".join(changed[:3]) + (
            f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({shown}); use a new --workdir"
        )


def checkpointed_stages(workdir: str) -> list[str]:
    """Stages of a workdir with at least one checkpoint step (`<stage>/checkpoints/<step>`)."""
    if not os.path.isdir(workdir):
        return []
    found = []
    for stage in sorted(os.listdir(workdir)):
        ckpts = os.path.join(workdir, stage, "checkpoints")
        if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
            found.append(stage)
    return found


def validate(config: ml_collections.ConfigDict, mesh, workdir: str) -> None:
    """Every check, in the order a user would want to hear about them."""
    check_names(config)
    check_combinations(config, mesh, workdir)
    check_workdir(config, workdir)
