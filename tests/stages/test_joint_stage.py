"""The joint generator stage (stages/joint.py): its loss is the weighted mean over the batch's
examples of every task's single-task loss on its own rows (rows × loss weight). (Its step is the
shared train_step over an objective of objectives; each objective's sharded step equals one
device's in tests/training/test_step.py.)"""

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.core import unfreeze

from crossmodal_jax import joint_run
from crossmodal_jax.config import blocks
from crossmodal_jax.data.mixture import task_batch
from crossmodal_jax.stages import generators, joint, tokenizer
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import abstract_state
from crossmodal_jax.training.step import make_optimizer

TASK_CONFIGS = {"text2image": "configs/vqdit_img.py", "image2text": "configs/img2txt.py"}


def _config(path, data_dir):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    return config


def joint_config(data_dir, rows=8):
    c = ml_collections.ConfigDict()
    c.task, c.seed, c.stages = "joint", 0, ("tokenizer", "generator")
    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())
    c.tasks = {name: _config(path, data_dir) for name, path in TASK_CONFIGS.items()}
    c.generator = ml_collections.ConfigDict()
    c.generator.model = blocks.joint_trunk(hidden_size=16, depth=1, num_heads=2)
    c.generator.mixture = {"text2image": 1.0, "image2text": 1.0}
    c.generator.loss_weights = {"text2image": 1.0, "image2text": 1.0}
    c.generator.train = blocks.train(steps=4, batch_size=2 * rows, warmup_steps=1)
    c.eval = blocks.evaluation()
    return c


def experiments(config, tmp_path, mesh):
    rules = sharding.rules_from_config(config.mesh.rules)
    exps = joint_run.build_task_experiments(
        config, str(tmp_path / "run"), mesh, rules, validate=False
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for exp in exps.values():  # untrained tokenizers: the stage needs one, not a good one
            exp.results["tokenizer"] = random_state(tokenizer.tokenizer_stage(exp), exp.ctx, 0)
    return exps


def random_state(spec, ctx, seed):
    """A state of the stage's shapes and shardings, every float random, every integer 0 (numpy:
    no init to compile; the test needs some weights, not trained ones)."""
    rng = np.random.default_rng(seed)
    _, abstract, _ = abstract_state(spec, make_optimizer(spec.train_cfg)[0], jax.random.key(0), ctx)

    def leaf(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            value = 0.05 * rng.standard_normal(x.shape)
        else:
            value = np.zeros(x.shape)
        return jax.device_put(value.astype(x.dtype), x.sharding)

    return jax.tree.map(leaf, abstract)


def test_the_joint_loss_is_the_weighted_mean_of_each_tasks_own_loss_over_its_rows(tmp_path):
    config = joint_config(str(tmp_path / "data"), rows=4)
    config.generator.mixture = {"text2image": 3.0, "image2text": 1.0}  # 6 + 2 rows of 8
    config.generator.train.batch_size = 8
    config.generator.loss_weights = {"text2image": 1.0, "image2text": 6.0}  # 6 : 2 × 6 of the loss
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    exps = experiments(config, tmp_path, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        own = {name: generators.generator_stage(exp) for name, exp in exps.items()}  # own models
        joint.attach_joint_model(exps, config.generator.model)
        spec = joint.joint_generator_stage(exps, config.generator)
        params = unfreeze(random_state(spec, next(iter(exps.values())).ctx, 2).params)
        for name in exps:  # without the task vector a view is its task's own model
            params[f"views_{name}"]["task_embed"] = jnp.zeros_like(
                params[f"views_{name}"]["task_embed"]
            )
        batch = next(spec.make_iterator())
        assert batch["text2image/text"].shape[0] == 6 and batch["image2text/text"].shape[0] == 2
        key = jax.random.key(3)
        loss, (_, metrics) = jax.jit(spec.objective)(params, spec.frozen_state, batch, key)
        expected = 0.0
        for i, (name, share) in enumerate((("image2text", 2 / 3), ("text2image", 1 / 3))):
            trunk = {k: v for k, v in params.items() if not k.startswith("views_")}
            view = {k: v for k, v in params[f"views_{name}"].items() if k != "task_embed"}
            task_loss, _ = jax.jit(own[name].objective)(
                {**trunk, **view},
                own[name].frozen_state,
                task_batch(batch, name),
                jax.random.fold_in(key, i),
            )
            np.testing.assert_allclose(metrics[f"{name}/loss"], task_loss, rtol=1e-5)
            expected += share * task_loss
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        assert float(loss) > 0


def test_task_shares_weigh_rows_by_loss_weight_and_refuse_all_zero():
    assert joint.task_shares({"a": 6, "b": 2}, {"a": 1.0, "b": 1.0}) == {"a": 0.75, "b": 0.25}
    assert joint.task_shares({"a": 6, "b": 2}, {"a": 0.0, "b": 2.0}) == {"a": 0.0, "b": 1.0}
    with pytest.raises(ValueError, match="zero weight"):
        joint.task_shares({"a": 6, "b": 2}, {"a": 0.0, "b": 0.0})
