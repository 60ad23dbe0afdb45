"""With fsdp > 1, the project's logical axis rules leave no large parameter replicated.

Shapes only (jax.eval_shape): realistic sizes cost nothing. The rules are the config's
(blocks.mesh().rules), the ones every run uses.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from crossmodal_jax.config import blocks
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.models.layers import dense
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.training.sharding import (
    DEFAULT_RULES,
    EMBED,
    MLP,
    logical_shardings,
    make_mesh,
    replicated_parameters,
    rules_from_config,
)

MIN_SIZE = 2**12
FSDP_MESHES = [
    pytest.param({"data": 2, "fsdp": 4}, id="data2xfsdp4"),
    pytest.param({"fsdp": 4, "tensor": 2}, id="fsdp4xtensor2"),
    pytest.param({"fsdp": -1}, id="fsdp8"),
]
RULES = rules_from_config(blocks.mesh().rules)


def _abstract_variables(model: nn.Module, *args, **kwargs):
    key = jax.random.key(0)
    return jax.eval_shape(lambda: model.init({"params": key, "vq": key}, *args, **kwargs))


def _dit(**extra):
    model = DiT((16, 16), 8, patch_size=2, **DIT_PRESETS["S"], **extra)
    args = (jnp.zeros((2, 16, 16, 8)), jnp.zeros((2,)), jnp.zeros((2, 8), jnp.int32))
    return _abstract_variables(model, *args)


def _vqvae(spatial_dims: int):
    if spatial_dims == 2:
        model, x = VQVAE(3, 64, (1, 2, 4), code_dim=64, num_codes=1024), jnp.zeros((2, 32, 32, 3))
    else:
        strides = ((1, 2, 2), (2, 2, 2))
        model = VQVAE(1, 32, (1, 2, 2), code_dim=16, spatial_dims=3, strides=strides)
        x = jnp.zeros((2, 8, 32, 32, 1))
    return _abstract_variables(model, x, train=False)


MODELS = {
    "dit": lambda: _dit(),
    "dit_class_labels": lambda: _dit(num_classes=1000, out_channels=16),
    # Every conditioning variant's own weights (models/conditioning.py) are sharded too.
    "dit_cross_attention": lambda: _dit(conditioning="cross_attention"),
    "dit_mmdit": lambda: _dit(conditioning="mmdit"),
    "vqvae_2d": lambda: _vqvae(2),
    "vqvae_video": lambda: _vqvae(3),
}


@functools.cache
def _params(name: str):
    """A model's abstract parameters, traced once for all the meshes."""
    return MODELS[name]()["params"]


def test_config_rules_are_the_default_rules():
    assert RULES == DEFAULT_RULES


@pytest.mark.parametrize("mesh_shape", FSDP_MESHES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_large_parameter_is_replicated(name, mesh_shape):
    params = _params(name)
    mesh = make_mesh(mesh_shape)
    shardings = logical_shardings(params, mesh, RULES)
    assert replicated_parameters(shardings, params, MIN_SIZE) == []
    # Sanity: the check sees the large parameters at all.
    assert any(x.size > MIN_SIZE for x in jax.tree.leaves(nn.meta.unbox(params)))


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = dense(128, (None, None), name="unannotated")(x)  # 64 x 128 kernel: replicated
        x = dense(64, (None, MLP), name="tensor_only")(x)  # replicated while tensor == 1
        return dense(64, (EMBED, MLP), name="fsdp")(x)


def test_replicated_parameters_finds_replicated_leaves():
    params = _abstract_variables(_Toy(), jnp.zeros((1, 64)))["params"]
    mesh = make_mesh({"data": 2, "fsdp": 4})
    found = replicated_parameters(logical_shardings(params, mesh, RULES), params, MIN_SIZE)
    assert found == ["tensor_only/kernel", "unannotated/kernel"]
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    found = replicated_parameters(logical_shardings(params, mesh, RULES), params, MIN_SIZE)
    assert found == ["unannotated/kernel"]
