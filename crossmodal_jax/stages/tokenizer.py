"""The tokenizer stage: a VQ-VAE of the task's continuous modality, trained to reconstruct it."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.pictures import picture_grid, save_png
from crossmodal_jax.logs.writers import MetricWriter
from crossmodal_jax.models.discriminator import PatchDiscriminator
from crossmodal_jax.models.lpips import abstract_lpips_params, load_lpips_params
from crossmodal_jax.stages.adversarial import (
    adversarial_vqvae_objective,
    init_adversarial,
    split_variables,
)
from crossmodal_jax.stages.objectives import PERCEPTUAL, vqvae_objective
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import StageSpec, restore_stage_state

NAME = "tokenizer"


def tokenizer_stage(exp: Experiment, *, restoring: bool = False) -> StageSpec:
    """The stage; `restoring` = only to restore a finished one (the frozen LPIPS network, if any,
    comes back from the checkpoint, so its weights file is not read)."""
    modality = exp.modality.name
    model = exp.tokenizer
    dummy = jnp.zeros((1, *exp.input_shape), jnp.float32)
    shown = exp.first_examples("test", 8 if modality == "image" else 4)[modality]
    adv = exp.config.tokenizer.adversarial
    frozen, perceptual_weight = {}, 0.0
    if adv.perceptual_weights:  # the LPIPS network, frozen beside the trained state
        replicated = sharding.replicated(exp.ctx.mesh)
        if restoring:
            params = abstract_lpips_params(replicated)
        else:
            params = jax.device_put(load_lpips_params(adv.perceptual_weights), replicated)
        frozen = {PERCEPTUAL: params}
        perceptual_weight = adv.perceptual_weight
    objective = vqvae_objective(model, data_key=modality, perceptual_weight=perceptual_weight)
    disc = None
    if adv.weight > 0:  # VQGAN's adversarial term (stages/adversarial.py)
        disc = PatchDiscriminator(channels=adv.channels, num_layers=adv.layers, dtype=model.dtype)
        objective = adversarial_vqvae_objective(
            model,
            disc,
            data_key=modality,
            weight=adv.weight,
            start_step=adv.start_step,
            perceptual_weight=perceptual_weight,
        )

    def init_variables(key):
        params_key, vq_key = jax.random.split(key)
        variables = dict(model.init({"params": params_key, "vq": vq_key}, dummy, train=False))
        if disc is not None:  # its own key: the VQ-VAE initialises as without it
            extra = init_adversarial(disc, jax.random.fold_in(key, 1), dummy)
            variables["params"] = {**variables["params"], **extra.pop("params")}
            variables.update(extra)
        return variables

    # Replicated outputs: every process may read them (multi-host safe).
    reconstruct = jax.jit(lambda v, x: model.apply(v, x, train=False)[0], out_shardings=P())

    def summarize(state, step, writer: MetricWriter):
        variables = {"params": state.params, **state.model_state}
        rec = np.asarray(reconstruct(variables, shown))
        # Top row: inputs; bottom row: reconstructions.
        grid = picture_grid(modality, np.concatenate([shown, rec]), cols=len(shown))
        writer.image(step, "reconstructions", grid)
        if writer.enabled:
            save_png(os.path.join(exp.ctx.workdir, NAME, f"reconstructions_{step:06d}.png"), grid)

    return StageSpec(
        name=NAME,
        train_cfg=exp.config.tokenizer.train,
        init_variables=init_variables,
        objective=objective,
        frozen_state=frozen,
        make_iterator=exp.train_iterator_factory(exp.config.tokenizer.train),
        summarize=summarize,
    )


def tokenizer_state(exp: Experiment):
    """The trained tokenizer stage's state: from this run's results, or restored from the
    workdir."""
    state = exp.results.get(NAME)
    if state is None:
        state = restore_stage_state(tokenizer_stage(exp, restoring=True), exp.ctx)
        steps = exp.config.tokenizer.train.steps
        if int(state.step) < steps:  # e.g. its final checkpoint was broken and set aside
            raise UserError(
                f"the tokenizer in {os.path.join(exp.ctx.workdir, NAME)} is trained to step "
                f"{int(state.step)} of {steps}; add 'tokenizer' to config.stages to finish it"
            )
    return state


def tokenizer_variables(exp: Experiment) -> dict:
    """The trained tokenizer's variables: from this run's results, or restored from the workdir."""
    state = tokenizer_state(exp)
    # Without the discriminator and its counter; with "vq_stats" of an EMA codebook.
    variables, _, _ = split_variables(state.params, state.model_state)
    return variables
