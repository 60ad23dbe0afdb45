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

from crossmodal_jax import sharding, stages
from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.dit import DIT_PRESETS

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
    _check("diffusion process", config.generator.diffusion.process, stages.DIFFUSION_PROCESSES)
    _check("noise schedule", config.generator.diffusion.schedule, gaussian.SCHEDULES)
    _check("prediction", config.generator.diffusion.prediction, gaussian.PREDICTIONS)
    _check("sampler", config.generator.sample.sampler, ("ddim", "ddpm"))
    if config.generator.model.preset:
        _check("DiT preset", config.generator.model.preset, DIT_PRESETS)
    try:
        stages.source(config, "train")
    except ValueError as e:
        raise UserError(str(e)) from e


def check_combinations(config: ml_collections.ConfigDict, mesh, workdir: str) -> None:
    """Settings that are each valid but cannot work together."""
    replicas, processes = sharding.data_parallel_size(mesh), jax.process_count()
    for stage in config.stages:
        batch = config[stage].train.batch_size
        for n, what in (
            (replicas, "data-parallel size (mesh data x fsdp)"),
            (processes, "process count"),
        ):
            if batch % n:
                raise UserError(
                    f"{stage}.train.batch_size={batch} is not divisible by the {what} {n}"
                )
    if "generator" in config.stages:
        try:
            h, w, _ = stages.latent_hwc(config)
        except ValueError as e:
            raise UserError(f"tokenizer.model.channel_mult: {e}") from e
        p = config.generator.model.patch_size
        if h % p or w % p:
            raise UserError(
                f"the latent grid {h}x{w} is not divisible by generator.model.patch_size={p}"
            )
        tok_ckpts = os.path.join(workdir, "tokenizer", "checkpoints")
        has_tokenizer = os.path.isdir(tok_ckpts) and any(d.isdigit() for d in os.listdir(tok_ckpts))
        if "tokenizer" not in config.stages and not has_tokenizer:
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
    """Refuse to resume a workdir that was trained with a different config."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = json.load(f)
    changed = config_diff(old, json.loads(config.to_json_best_effort()))
    if changed:
        shown = "; ".join(changed[:3]) + (
            f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({shown}); use a new --workdir"
        )


def validate(config: ml_collections.ConfigDict, mesh, workdir: str) -> None:
    """Every check, in the order a user would want to hear about them."""
    check_names(config)
    check_combinations(config, mesh, workdir)
    check_workdir(config, workdir)
