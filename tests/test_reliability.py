"""Reliability in-process: NaN/Inf handling, broken checkpoints, config checks."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vqdit_img
from crossmodal_jax import data, sharding, validation
from crossmodal_jax.checkpoint import StageCheckpointer
from crossmodal_jax.errors import UserError
from crossmodal_jax.guards import NonFiniteLoss
from crossmodal_jax.step import init_state, train_step
from crossmodal_jax.train import RunContext, StageSpec, fit


def _exploding_objective(params, model_state, batch, key):
    """-w pushes w up by ~lr a step (Adam); once w > 3.5 (the 4th step) the loss is NaN."""
    w = params["w"] + 0.0 * jnp.mean(batch["image"])
    loss = jnp.where(w > 3.5, jnp.nan, -w)
    return loss, (model_state, {})


def _toy_fit(tmp_path, **train_overrides):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    train_cfg = config.tokenizer.train
    train_cfg.update(
        steps=8,
        learning_rate=1.0,
        warmup_steps=0,
        end_lr_fraction=1.0,
        grad_clip=100.0,
        checkpoint_every=1,
        log_every=1,
        **train_overrides,
    )
    source = data.get_source("digits", "train", config.data.data_dir)
    spec = StageSpec(
        name="toy",
        train_cfg=train_cfg,
        init_variables=lambda key: {"params": {"w": jnp.ones(())}},
        objective=_exploding_objective,
        make_iterator=lambda: data.make_train_iterator(
            source,
            global_batch_size=16,
            seed=0,
            transform=data.ImageTextFeatures(config.data.text_max_len),
        ),
    )
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    ctx = RunContext(
        config=config,
        workdir=str(tmp_path / "run"),
        mesh=mesh,
        rules=sharding.DEFAULT_RULES,
        results={},
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(ctx.rules):
        return fit(spec, ctx, stage_index=0), os.path.join(ctx.workdir, "toy")


def test_nan_stops_the_run_naming_the_step_and_saves_nothing_bad(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 4 .*skip_nonfinite=True"):
        _toy_fit(tmp_path)
    saved = sorted(
        int(d) for d in os.listdir(os.path.join(tmp_path, "run/toy/checkpoints")) if d.isdigit()
    )
    assert saved == [1, 2, 3]


def test_skip_nonfinite_keeps_the_last_good_state_and_counts(tmp_path):
    state, stage_dir = _toy_fit(tmp_path, skip_nonfinite=True)
    assert int(state.step) == 8
    np.testing.assert_allclose(state.params["w"], 4.0, rtol=1e-5)  # frozen after step 3
    rows = [json.loads(line) for line in open(os.path.join(stage_dir, "metrics.jsonl"))]
    assert [r["skipped_updates"] for r in rows][-1] == 5


def test_train_step_skip_leaves_state_untouched_but_advances_step():
    tx = optax.sgd(0.1)
    state = init_state({"w": jnp.ones(3)}, {"c": jnp.zeros(())}, tx)
    nan_objective = lambda p, ms, b, k: (jnp.sum(p["w"]) * jnp.nan, ({"c": ms["c"] + 1}, {}))
    new, metrics = train_step(
        state,
        {},
        jax.random.key(0),
        objective=nan_objective,
        tx=tx,
        ema_decay=0.5,
        skip_nonfinite=True,
    )
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    jax.tree.map(
        np.testing.assert_array_equal,
        (new.params, new.model_state, new.ema_params),
        (state.params, state.model_state, state.ema_params),
    )


def _corrupt(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def test_broken_newest_checkpoint_falls_back_and_is_set_aside(tmp_path):
    directory = str(tmp_path / "stage" / "checkpoints")
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    ckpt.save(1, {"w": jnp.ones(4)}, force=True)
    ckpt.save(2, {"w": 2 * jnp.ones(4)}, force=True)
    ckpt.close()
    _corrupt(os.path.join(directory, "2"))
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    step, state = ckpt.restore(abstract)
    assert step == 1 and float(state["w"][0]) == 1.0
    assert os.listdir(tmp_path / "stage" / "broken_checkpoints")[0].startswith("2-")
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, {"w": 3 * jnp.ones(4)}, force=True)  # the step can be written again
    ckpt.close()
    assert os.path.isdir(os.path.join(directory, "1"))  # the good one is never deleted


def test_empty_step_directory_is_skipped(tmp_path):
    directory = str(tmp_path / "stage" / "checkpoints")
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    ckpt.save(1, {"w": jnp.ones(2)}, force=True)
    ckpt.close()
    os.makedirs(os.path.join(directory, "5"))
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    step, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    ckpt.close()
    assert step == 1


def test_impossible_combinations_are_named(tmp_path):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    mesh = sharding.make_mesh({"data": 8})
    config.generator.train.batch_size = 12
    with pytest.raises(
        UserError,
        match=r"generator.train.batch_size=12 is not divisible by the "
        r"data-parallel size .* 8",
    ):
        validation.check_combinations(config, mesh, str(tmp_path / "run"))
    config.generator.train.batch_size = 16
    config.stages = ("generator",)
    with pytest.raises(UserError, match="needs a trained tokenizer"):
        validation.check_combinations(config, mesh, str(tmp_path / "run"))


def test_config_diff_ignores_safe_keys_only():
    old = json.loads(vqdit_img.get_config().to_json_best_effort())
    new = vqdit_img.get_config()
    new.generator.train.steps = 10
    new.eval.samples_per_prompt = 3
    assert validation.config_diff(old, json.loads(new.to_json_best_effort())) == []
    new.tokenizer.model.num_codes = 64
    assert validation.config_diff(old, json.loads(new.to_json_best_effort())) == [
        "tokenizer.model.num_codes: 256 -> 64"
    ]
