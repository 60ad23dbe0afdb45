"""The joint model (models/joint_dit.py): a view is its task's own model on the shared trunk,
gradients of one task reach the trunk and its own view only, and one joint model is smaller than
the single-task models it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from flax.linen import meta

from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.joint_dit import JointDiT, merge_view_variables, view_spec
from crossmodal_jax.models.token_dit import TokenDiT

TRUNK = dict(hidden_size=32, depth=2, num_heads=2, conditioning="cross_attention")
IMAGE = DiT(input_size=(4, 4), in_channels=3, patch_size=2, cond_vocab_size=20, cond_len=5, **TRUNK)
TEXT = TokenDiT(seq_len=5, vocab_size=20, cond_feature_dim=6, cond_len=16, **TRUNK)


def image_inputs(b=2):
    x = jax.random.normal(jax.random.key(1), (b, 4, 4, 3))
    ids = jnp.arange(b * 5).reshape(b, 5) % 20
    return x, jnp.full((b,), 300.0), ids, jnp.ones((b, 5), jnp.int32)


def text_inputs(b=2):
    ids = jnp.arange(b * 5).reshape(b, 5) % 20
    cond = jax.random.normal(jax.random.key(2), (b, 16, 6))
    return ids, jnp.full((b,), 500.0), cond, jnp.ones((b, 16), jnp.int32)


def joint_and_variables():
    """The joint model and its variables' shapes (eval_shape: nothing is initialised)."""
    joint = JointDiT(specs=(view_spec("t2i", IMAGE), view_spec("i2t", TEXT)), **TRUNK)
    trees = {
        "t2i": jax.eval_shape(joint.clone(task="t2i").init, jax.random.key(3), *image_inputs(1)),
        "i2t": jax.eval_shape(joint.clone(task="i2t").init, jax.random.key(4), *text_inputs(1)),
    }
    return joint, meta.unbox(merge_view_variables(trees))


def randomized(params, seed):
    """Every parameter random (adaLN-Zero starts with zero gates and heads: outputs would be 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), params)


def standalone_params(joint_params, task):
    """The joint tree as the task's own model's tree: trunk + its view, without the task vector."""
    own = dict(unfreeze(joint_params[f"views_{task}"]))
    own.pop("task_embed")
    trunk = {k: v for k, v in joint_params.items() if not k.startswith("views_")}
    return {**trunk, **own}


def test_a_view_is_its_tasks_own_model_plus_the_task_vector():
    joint, variables = joint_and_variables()
    params = unfreeze(randomized(variables["params"], 5))
    for task, model, inputs in (("t2i", IMAGE, image_inputs()), ("i2t", TEXT, text_inputs())):
        own = jax.jit(model.apply)({"params": standalone_params(params, task)}, *inputs)
        view = jax.jit(joint.clone(task=task).apply)
        zero_vector = jax.tree.map(lambda x: x, params)
        zero_vector[f"views_{task}"]["task_embed"] = jnp.zeros_like(
            params[f"views_{task}"]["task_embed"]
        )
        np.testing.assert_allclose(
            view({"params": zero_vector}, *inputs), own, rtol=1e-5, atol=1e-6
        )
        # The task vector enters the adaLN vector: it changes the output.
        assert not np.allclose(view({"params": params}, *inputs), own, atol=1e-4)


def test_one_tasks_gradient_reaches_the_trunk_and_its_own_view_only():
    joint, variables = joint_and_variables()
    params = randomized(variables["params"], 6)

    def loss(p):
        return jnp.sum(joint.clone(task="i2t").apply({"params": p}, *text_inputs()) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    norm = {k: float(sum(jnp.sum(g**2) for g in jax.tree.leaves(v))) for k, v in grads.items()}
    assert norm["views_t2i"] == 0.0
    assert norm["views_i2t"] > 0 and norm["blocks_0"] > 0 and norm["t_embed"] > 0


def test_the_joint_model_is_smaller_than_the_models_it_replaces():
    joint, variables = joint_and_variables()
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    own = {
        "t2i": meta.unbox(jax.eval_shape(IMAGE.init, jax.random.key(0), *image_inputs(1))),
        "i2t": meta.unbox(jax.eval_shape(TEXT.init, jax.random.key(0), *text_inputs(1))),
    }
    trunk = count({k: v for k, v in variables["params"].items() if not k.startswith("views_")})
    assert count(variables) == count(own["t2i"]) + count(own["i2t"]) - trunk + 2 * 32
    assert count(variables) < count(own["t2i"]) + count(own["i2t"])


def test_the_standalone_view_has_the_tasks_attributes():
    joint, _ = joint_and_variables()
    assert joint.clone(task="i2t").seq_len == 5
    assert joint.clone(task="i2t").cond_input_shape == (16, 6)
