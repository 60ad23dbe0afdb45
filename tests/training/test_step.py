"""The shared train_step: optimizer schedule, EMA, and sharded == one-device steps on a 4x2 mesh."""

import functools
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vqdit_img
from crossmodal_jax.config import blocks
from crossmodal_jax.data import text as text_tok
from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.discriminator import PatchDiscriminator
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.vqvae import vqvae_from_config
from crossmodal_jax.stages.adversarial import adversarial_vqvae_objective, init_adversarial
from crossmodal_jax.stages.objectives import gaussian_diffusion_objective, vqvae_objective
from crossmodal_jax.training import sharding
from crossmodal_jax.training.loop import compile_step
from crossmodal_jax.training.stage import RunContext, StageSpec, abstract_state, fresh_state
from crossmodal_jax.training.step import ema_update, init_state, make_optimizer, train_step


def test_lr_schedule_warmup_then_cosine():
    cfg = vqdit_img.get_config().tokenizer.train
    cfg.update(steps=100, warmup_steps=10, learning_rate=1.0, end_lr_fraction=0.1)
    _, schedule = make_optimizer(cfg)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 0.1, rtol=1e-5)
    assert 0.1 < float(schedule(55)) < 1.0


def test_grad_clip_zero_turns_clipping_off():
    """grad_clip=0 leaves gradients as they are (the DiT recipe clips nothing); optax's clip to
    norm 0 would zero every gradient, and the first Adam step would move nothing. The clip's
    state is empty either way, so checkpoints keep one structure."""
    cfg = vqdit_img.get_config().tokenizer.train
    cfg.update(warmup_steps=0, learning_rate=1.0, end_lr_fraction=1.0, weight_decay=0.0)
    grads, params = {"w": jnp.array([3.0, -4.0])}, {"w": jnp.zeros(2)}
    for clip in (1.0, 0.0):
        cfg.grad_clip = clip
        tx, _ = make_optimizer(cfg)
        state = tx.init(params)
        assert state[0] == optax.EmptyState()
        updates, _ = tx.update(grads, state, params)
        # Adam's first step is -lr * g / |g| per coordinate, whatever the (nonzero) scale.
        np.testing.assert_allclose(updates["w"], [-1.0, 1.0], rtol=1e-4)


def test_train_step_matches_manual_update_and_ema():
    """One step = optax update of the objective's grads; ema = d*ema + (1-d)*new params."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}

    def objective(p, model_state, batch, key):
        loss = jnp.sum((p["w"] * batch["x"] - 1.0) ** 2)
        return loss, (model_state, {"aux": loss * 2})

    tx = optax.sgd(0.1)
    state = init_state(params, {}, tx)
    batch = {"x": jnp.array([0.5, 1.0, 2.0])}
    new, metrics = train_step(
        state, batch, jax.random.key(0), objective=objective, tx=tx, ema_decay=0.9
    )
    grad = 2 * (params["w"] * batch["x"] - 1.0) * batch["x"]
    expected = params["w"] - 0.1 * grad
    np.testing.assert_allclose(new.params["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(new.ema_params["w"], 0.9 * params["w"] + 0.1 * expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-6)
    assert int(new.step) == 1 and float(metrics["aux"]) == pytest.approx(2 * float(metrics["loss"]))
    np.testing.assert_allclose(ema_update({"a": 2.0}, {"a": 4.0}, 0.0)["a"], 4.0)


def _tiny_config():
    config = vqdit_img.get_config("smoke")
    # One resolution (no down/upsampling): the sharded convs are all there, at half the compile.
    config.tokenizer.model.update(channels=8, num_codes=16, code_dim=4, channel_mult=(1,))
    config.generator.model.update(hidden_size=16, num_heads=2, depth=1)
    return config


def _batch(rng, n=8, text_len=32):
    ids, mask = text_tok.encode_batch(
        [f"the digit {w}" for w in ("one", "two", "three", "four")] * (n // 4), text_len
    )
    return {
        "image": rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
        "text": ids,
        "text_mask": mask,
    }


def _run_steps(spec, mesh, rules, batch_np, steps=2, hlo=None):
    """Init + `steps` shared train steps on `mesh`, exactly as the training loop does it (the
    compiled step's HLO text is appended to `hlo` if given)."""
    ctx = RunContext(workdir="", mesh=mesh, rules=rules, seed=0)
    tx, _ = make_optimizer(spec.train_cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init_fn, _, shardings = abstract_state(spec, tx, jax.random.key(1), ctx)
        state = fresh_state(spec, init_fn, jax.random.key(1))
        batch = sharding.global_batch(batch_np, mesh)
        step_fn, _ = compile_step(spec, tx, shardings, state, batch, jax.random.key(2), mesh)
        if hlo is not None:
            hlo.append(step_fn.as_text())
        for _ in range(steps):
            state, metrics = step_fn(state, batch, jax.random.key(2))
    return jax.device_get(state), jax.device_get(metrics), shardings


MESHES = {
    "data4_tensor2": dict(data=4, fsdp=1, tensor=2),
    "data4_fsdp2": dict(data=4, fsdp=2, tensor=1),
    "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
    "data2_sequence4": dict(data=2, sequence=4),
}


def _tokenizer_spec():
    config = _tiny_config()
    model = vqvae_from_config(config.tokenizer.model, in_channels=1)
    return StageSpec(
        name="tokenizer",
        train_cfg=config.tokenizer.train,
        init_variables=lambda k: model.init(
            {"params": k, "vq": k}, jnp.zeros((1, 8, 8, 1)), train=False
        ),
        objective=vqvae_objective(model),
        make_iterator=lambda: None,
    )


def _adversarial_tokenizer_spec():
    """The tokenizer with VQGAN's discriminator, on from the first step."""
    config = _tiny_config()
    model = vqvae_from_config(config.tokenizer.model, in_channels=1)
    disc = PatchDiscriminator(channels=8, num_layers=2)
    dummy = jnp.zeros((1, 8, 8, 1))

    def init_variables(k):
        variables = dict(model.init({"params": k, "vq": k}, dummy, train=False))
        extra = init_adversarial(disc, jax.random.fold_in(k, 1), dummy)
        variables["params"] = {**variables["params"], **extra.pop("params")}
        return {**variables, **extra}

    return StageSpec(
        name="tokenizer",
        train_cfg=config.tokenizer.train,
        init_variables=init_variables,
        objective=adversarial_vqvae_objective(
            model, disc, data_key="image", weight=0.5, start_step=0
        ),
        make_iterator=lambda: None,
    )


def test_sharded_adversarial_tokenizer_step_equals_one_device():
    batch = _batch(np.random.default_rng(0))
    one_mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    one, m1, _ = _run_steps(_adversarial_tokenizer_spec(), one_mesh, sharding.DEFAULT_RULES, batch)
    mesh = sharding.make_mesh(MESHES["data2_fsdp2_tensor2"])
    many, m8, shardings = _run_steps(
        _adversarial_tokenizer_spec(), mesh, sharding.DEFAULT_RULES, batch
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, many)
    np.testing.assert_allclose(m1["disc_loss"], m8["disc_loss"], rtol=1e-5)
    assert int(one.model_state["adversarial"]["step"]) == 2
    # The discriminator is sharded like the rest: some of its kernels split over non-data axes.
    specs = [s.spec for s in jax.tree.leaves(shardings.params["discriminator"])]
    assert any(any(a is not None for a in spec) for spec in specs)


@functools.cache
def _tokenizer_one_device():
    batch = _batch(np.random.default_rng(0))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    return _run_steps(_tokenizer_spec(), mesh, sharding.DEFAULT_RULES, batch)


# 4x2 as in the issue, and 2x2x2: a conv whose input channels are split over "tensor" while its
# kernel is (fsdp, tensor) once gave wrong gradients only on a 3-axis mesh (see models/layers.py).
@pytest.mark.parametrize("mesh_name", ["data4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_tokenizer_step_equals_one_device(mesh_name):
    one, m1, _ = _tokenizer_one_device()
    batch = _batch(np.random.default_rng(0))
    mesh = sharding.make_mesh(MESHES[mesh_name])
    many, m8, shardings = _run_steps(_tokenizer_spec(), mesh, sharding.DEFAULT_RULES, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, many)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    # Something really is split: at least one parameter is sharded over a non-data mesh axis.
    specs = [s.spec for s in jax.tree.leaves(shardings.params)]
    assert any(any(a is not None for a in spec) for spec in specs)


# data2_sequence4: sequence parallelism, the DiT's 48 tokens (32 caption + 16 latent) split 4 ways
# in every activation, keys and values gathered inside attention.
@pytest.mark.parametrize("mesh_name", ["data2_fsdp2_tensor2", "data2_sequence4"])
def test_sharded_generator_step_equals_one_device(mesh_name):
    config = _tiny_config()
    tokenizer = vqvae_from_config(config.tokenizer.model, in_channels=1)
    tok_vars = tokenizer.init(
        {"params": jax.random.key(3), "vq": jax.random.key(4)}, jnp.zeros((1, 8, 8, 1)), train=False
    )
    tok_vars = sharding.strip_boxes(tok_vars)
    dit = DiT(
        input_size=(8, 8),
        in_channels=4,
        patch_size=2,
        hidden_size=16,
        depth=1,
        num_heads=2,
        cond_vocab_size=text_tok.VOCAB_SIZE,
        cond_len=32,
    )
    schedule = gaussian.make_schedule("cosine", 50)
    latents = {"mean": jnp.full((4,), 0.1), "std": jnp.full((), 0.5)}

    def make_spec(mesh):
        frozen = jax.device_put(
            {"tokenizer": tok_vars, "latents": latents}, sharding.replicated(mesh)
        )
        return StageSpec(
            name="generator",
            train_cfg=config.generator.train,
            init_variables=lambda k: dit.init(
                k,
                jnp.zeros((1, 8, 8, 4)),
                jnp.zeros((1,), jnp.int32),
                jnp.zeros((1, 32), jnp.int32),
                jnp.ones((1, 32), jnp.int32),
            ),
            objective=gaussian_diffusion_objective(
                dit, tokenizer, schedule, prediction="v", cond_drop=0.25
            ),
            make_iterator=lambda: None,
            frozen_state=frozen,
        )

    batch = _batch(np.random.default_rng(1))
    rules = sharding.DEFAULT_RULES
    mesh1 = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    one, m1, _ = _run_steps(make_spec(mesh1), mesh1, rules, batch)
    mesh8 = sharding.make_mesh(MESHES[mesh_name])
    hlo = []
    many, m8, _ = _run_steps(make_spec(mesh8), mesh8, rules, batch, hlo=hlo)
    if mesh_name == "data2_sequence4":  # tokens really are split: keys and values all-gathered
        assert "all-gather" in hlo[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, many)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def test_mesh_fills_minus_one_and_rejects_bad_shapes():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "sequence": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match="unknown"):
        sharding.make_mesh({"model": 2})


def _fake_devices(processes: int, per_process: int) -> list:
    """Stand-ins for the devices of a multi-process run (one granule a process, as on CPUs)."""
    return [
        SimpleNamespace(id=i, process_index=i // per_process, platform="cpu", device_kind="cpu")
        for i in range(processes * per_process)
    ]


def test_a_hybrid_mesh_puts_the_dcn_axis_across_processes_and_the_rest_inside():
    devices = _fake_devices(2, 4)
    grid = sharding.mesh_devices({"data": 2, "fsdp": 4}, devices, dcn_shape={"data": 2})
    owner = np.vectorize(lambda d: d.process_index)(grid)[:, :, 0, 0]
    np.testing.assert_array_equal(owner, [[0, 0, 0, 0], [1, 1, 1, 1]])  # data across, fsdp inside
    # data 4 = 2 slices x 2: steps 0-1 of the data axis in process 0, 2-3 in process 1.
    grid = sharding.mesh_devices({"data": -1, "fsdp": 2}, devices, dcn_shape={"data": 2})
    owner = np.vectorize(lambda d: d.process_index)(grid)[:, :, 0, 0]
    np.testing.assert_array_equal(owner, [[0, 0], [0, 0], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="spans 4 slices, but the devices are in 1 slice"):
        sharding.mesh_devices({"data": 4, "fsdp": 2}, devices, dcn_shape={"data": 4})
    with pytest.raises(ValueError, match=r"dcn_shape .* must divide the mesh"):
        sharding.mesh_devices({"data": 1, "fsdp": 8}, devices, dcn_shape={"data": 2})


def test_a_config_mesh_the_devices_cannot_take_is_one_line_naming_config_mesh():
    mesh_cfg = blocks.mesh()
    mesh_cfg.shape.data = 3 * jax.device_count()
    with pytest.raises(UserError) as e:
        sharding.mesh_from_config(mesh_cfg)
    assert str(e.value).startswith("config.mesh: ") and "\n" not in str(e.value)
    mesh, rules = sharding.mesh_from_config(mesh_cfg, {"data": -1})
    assert mesh.size == jax.device_count() and rules == sharding.DEFAULT_RULES


def test_sequence_or_tensor_across_processes_is_found():
    """Processes get distinct batch rows: an axis that replicates the batch must stay inside one."""
    devices = _fake_devices(2, 4)
    inside = sharding.mesh_devices({"data": 2, "sequence": 4}, devices)
    assert sharding.axes_across_processes(inside, ("sequence", "tensor")) == []
    across = sharding.mesh_devices({"sequence": 8}, devices)
    assert sharding.axes_across_processes(across, ("sequence", "tensor")) == ["sequence"]
    across = sharding.mesh_devices({"fsdp": 4, "tensor": 2}, _fake_devices(4, 2))
    assert sharding.axes_across_processes(across, ("sequence", "tensor")) == []
    across = sharding.mesh_devices({"data": 2, "tensor": 4}, _fake_devices(4, 2))
    assert sharding.axes_across_processes(across, ("sequence", "tensor")) == ["tensor"]
