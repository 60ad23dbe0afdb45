"""Elastic resume: a stage checkpointed on 8 data-parallel devices continues on 4 devices with FSDP
and back, as a preempted job that returns on another slice would, and trains as if on one mesh."""

import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import vqdit_img
from crossmodal_jax import data
from crossmodal_jax.models.vqvae import vqvae_from_config
from crossmodal_jax.stages.objectives import vqvae_objective
from crossmodal_jax.training import sharding
from crossmodal_jax.training.loop import MESH_FILE, fit
from crossmodal_jax.training.stage import RunContext, StageSpec

EIGHT = {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}
FOUR_FSDP = {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 1}


def _fit(workdir: str, mesh_shape: dict, steps: int, data_dir: str):
    config = vqdit_img.get_config("smoke")
    config.tokenizer.model.update(channels=8, num_codes=16, code_dim=4, channel_mult=(1,))
    train_cfg = config.tokenizer.train
    # A constant learning rate: `steps` (changed between the runs below) shapes no schedule.
    train_cfg.update(
        steps=steps,
        checkpoint_every=2,
        log_every=1,
        batch_size=16,
        warmup_steps=0,
        end_lr_fraction=1.0,
    )
    model = vqvae_from_config(config.tokenizer.model, in_channels=1)
    source = data.get_source("digits", "train", data_dir)
    spec = StageSpec(
        name="tokenizer",
        train_cfg=train_cfg,
        init_variables=lambda k: model.init(
            {"params": k, "vq": k}, jnp.zeros((1, 8, 8, 1)), train=False
        ),
        objective=vqvae_objective(model),
        make_iterator=lambda: data.make_train_iterator(
            source,
            global_batch_size=16,
            seed=0,
            transform=data.ImageTextFeatures(config.data.text_max_len),
        ),
    )
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    mesh = sharding.make_mesh(mesh_shape, devices)
    ctx = RunContext(workdir=workdir, mesh=mesh, rules=sharding.DEFAULT_RULES, seed=0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(ctx.rules):
        state = fit(spec, ctx, stage_index=0)
    return jax.device_get(state)


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "tokenizer", "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_a_checkpoint_from_8_devices_continues_on_4_with_fsdp_and_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="crossmodal_jax")
    data_dir = str(tmp_path / "data")
    one = _fit(str(tmp_path / "one"), EIGHT, 6, data_dir)
    moved = str(tmp_path / "moved")
    _fit(moved, EIGHT, 2, data_dir)
    _fit(moved, FOUR_FSDP, 4, data_dir)  # restored from step 2, resharded
    assert "the mesh changed since the last run: {'data': 8" in caplog.text
    state = _fit(moved, EIGHT, 6, data_dir)  # and back, from step 4
    assert json.load(open(os.path.join(moved, "tokenizer", MESH_FILE))) == EIGHT
    # The same global batches in the same order (the iterator's position came back), and the same
    # parameters, codebook and optimizer state up to the reduction order of another mesh.
    want, got = _losses(str(tmp_path / "one")), _losses(moved)
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_allclose(
        [got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], rtol=1e-4
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
        (state.params, state.model_state, state.opt_state),
        (one.params, one.model_state, one.opt_state),
    )
