"""A run's tokenizer from elsewhere (`tokenizer_from`), for single-task and joint runs alike:
the finished tokenizer of another workdir of this project, or a pretrained checkpoint.

A pretrained VQGAN/VAE is loaded while the Experiment is built (its frozen weights become
`results["tokenizer"]`, experiment.py); a workdir's tokenizer is restored here, once the mesh is
set, and checked first (same dataset, same tokenizer model). Either way the run does not train a
tokenizer stage: `results["tokenizer"]` holds it before any stage runs.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from crossmodal_jax import pretrained
from crossmodal_jax.config.workdir import config_diff, load_resolved_config
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import tokenizer
from crossmodal_jax.tasks import JOINT
from crossmodal_jax.training.stage import restore_stage_state
from crossmodal_jax.training.step import TrainState


def from_workdir(c: ml_collections.ConfigDict) -> bool:
    """Whether a task config takes its tokenizer from another workdir of ours (not a checkpoint)."""
    return bool(c.tokenizer_from) and not pretrained.is_checkpoint(c.tokenizer_from)


def check_tokenizer_source(where: str, c: ml_collections.ConfigDict) -> None:
    """One-line UserErrors unless `c.tokenizer_from` is a pretrained checkpoint (loaded and
    checked when the Experiment is built) or a workdir of the same dataset whose tokenizer
    block builds `c`'s tokenizer model. `where` names the key for messages."""
    path = c.tokenizer_from
    if not path or pretrained.is_checkpoint(path):
        return
    where = f"{where}={path!r}"
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(
            f"{where}: no config.json there; name a workdir whose tokenizer has trained, or a "
            "pretrained tokenizer (a diffusers VQModel/AutoencoderKL folder, a .ckpt file)"
        )
    source = load_resolved_config(path)
    if source.get("task") == JOINT:
        raise UserError(f"{where} is a joint workdir; name its task's folder, e.g. {path}/{c.task}")
    if source.data.name != c.data.name:
        raise UserError(
            f"{where}: its tokenizer was trained on {source.data.name!r}, {c.task} reads "
            f"{c.data.name!r}"
        )
    changed = config_diff(
        {"tokenizer": {"model": source.tokenizer.model.to_dict()}},
        {"tokenizer": {"model": c.tokenizer.model.to_dict()}},
    )
    if changed:
        raise UserError(f"{where}: its tokenizer model differs from this run's: {changed[0]}")


def borrowed_tokenizer(exp: Experiment, path: str) -> TrainState:
    """The finished tokenizer stage of workdir `path`, for `exp` (one-line UserError otherwise)."""
    spec = tokenizer.tokenizer_stage(exp, restoring=True)
    try:
        state = restore_stage_state(spec, dataclasses.replace(exp.ctx, workdir=path))
    except FileNotFoundError:
        raise UserError(f"no tokenizer checkpoint in {path}/{tokenizer.NAME}") from None
    steps = load_resolved_config(path).tokenizer.train.steps
    if int(state.step) < steps:
        raise UserError(
            f"the tokenizer in {path}/{tokenizer.NAME} is trained to step {int(state.step)} of "
            f"{steps}; finish that run first"
        )
    return state


def attach_tokenizer(exp: Experiment) -> None:
    """Give `exp` its tokenizer from another workdir, if its config names one (call inside the
    run's mesh and rules). A pretrained one is attached already."""
    if from_workdir(exp.config):
        exp.results[tokenizer.NAME] = borrowed_tokenizer(exp, exp.config.tokenizer_from)
