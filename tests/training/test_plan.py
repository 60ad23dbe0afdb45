"""Sizing a step before running it: ahead-of-time compiled memory and collectives on 8 fake
devices against their closed forms, and the HLO collective parser."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.training import plan, sharding
from crossmodal_jax.training.stage import StageSpec

BATCH = 16


def _spec() -> StageSpec:
    """A DiT whose weights are nearly all large matrices (what FSDP splits)."""
    from configs import vqdit_img

    dit = DiT((16, 16), 4, patch_size=2, hidden_size=256, depth=2, num_heads=4)
    schedule = gaussian.make_schedule("linear", 100)

    def objective(params, model_state, batch, key):
        model_fn = lambda xt, t: dit.apply({"params": params}, xt, t)
        loss, _ = gaussian.training_loss(
            schedule, model_fn, batch["latents"], key, prediction="eps"
        )
        return loss, (model_state, {})

    return StageSpec(
        name="dit",
        train_cfg=vqdit_img.get_config().generator.train,
        init_variables=lambda k: dit.init(k, jnp.zeros((1, 16, 16, 4)), jnp.zeros((1,))),
        objective=objective,
        make_iterator=lambda: None,
    )


def _plan(shape):
    mesh = sharding.make_mesh(shape)
    batch = {"latents": jax.ShapeDtypeStruct((BATCH, 16, 16, 4), np.float32)}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        return plan.plan_step(_spec(), mesh, sharding.DEFAULT_RULES, batch)


@pytest.mark.parametrize("shape, shards", [({"fsdp": 8}, 8), ({"data": 8}, 1)])
def test_compiled_argument_bytes_match_the_analytic_state(shape, shards):
    """Arguments = this device's share of weights + Adam + EMA (16 B a parameter, split by
    FSDP) + its rows of the batch: within 10 % (norms and biases stay whole under FSDP)."""
    out = _plan(shape)
    batch_bytes = BATCH * 16 * 16 * 4 * 4 / 8
    expected = plan.analytic_bytes(out["params"], shards)["state"] + batch_bytes
    assert out["argument_bytes"] == pytest.approx(expected, rel=0.10)
    assert (out["replicated"] == []) == (shards > 1)  # FSDP leaves no large parameter whole
    if shards == 1:  # data parallel: the float32 gradients are all-reduced, once
        assert out["collectives"]["all-reduce"] == pytest.approx(4 * out["params"], rel=0.10)
    else:  # FSDP: weights gathered (or activations reduced: GSPMD picks per matmul)
        assert out["collectives"]["all-gather"] > 0


def test_collective_bytes_read_from_hlo():
    hlo = """
  %all-gather.1 = f32[8,256]{1,0} all-gather(f32[1,256]{1,0} %p), dimensions={0}
  %ar = (bf16[4,4]{1,0}, f32[10]{0}) all-reduce(bf16[4,4]{1,0} %a, f32[10]{0} %b), to_apply=%add
  %ags = bf16[2,3]{1,0} all-gather-start(bf16[1,3]{1,0} %q), dimensions={0}
  %agd = bf16[2,3]{1,0} all-gather-done(bf16[2,3]{1,0} %ags)
  %rs = f32[2]{0} reduce-scatter(f32[16]{0} %g), dimensions={0}
  %x = f32[8]{0} add(f32[8]{0} %y, f32[8]{0} %z)
"""
    got = plan.collective_bytes(hlo)
    assert got["all-gather"] == 8 * 256 * 4 + 2 * 3 * 2  # the async pair counted once
    assert got["all-reduce"] == 4 * 4 * 2 + 10 * 4
    assert got["reduce-scatter"] == 2 * 4
    assert got["all-to-all"] == 0
