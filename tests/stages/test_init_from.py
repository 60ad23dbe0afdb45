"""A latent generator initialised from a converted DiT (`generator.init_from`, stages/init_from.py):
at the stage's fresh start every parameter the checkpoint holds with our shape is the checkpoint's,
the groups named in `generator.init_reinit` keep a plain init's values, the log names both and the
checkpoint's leftovers, and what cannot work is refused in one line."""

import dataclasses
import importlib.util
import json
import logging

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from crossmodal_jax import joint_run, pretrained
from crossmodal_jax.config import validation
from crossmodal_jax.errors import UserError
from crossmodal_jax.models.dit import DIT_LAYOUTS, DiT
from crossmodal_jax.run import build_experiment
from crossmodal_jax.stages import builders, generators, init_from
from crossmodal_jax.training.stage import abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer
from tests.pretrained import folders

safetensors_numpy = pytest.importorskip("safetensors.numpy")

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

NUM_CLASSES = 10
# What the checkpoint cannot give the smoke config's caption DiT: its caption embedder (the
# checkpoint has a class-label table instead) and its output layer (learn-sigma: 2x channels).
REINIT = ("cond_embed", "final_layer")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A VAE giving the 8×8 digits 4×4×4 latents, and a random diffusers DiT of the smoke
    generator's architecture over them (width 32, 1 block, 2 heads, patch 1)."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,  # learn_sigma: [eps | variance]
        num_layers=1,
        sample_size=4,
        patch_size=1,
        num_embeds_ada_norm=NUM_CLASSES,
    ).eval()
    with torch.no_grad():
        for p in dit.parameters():  # no zero-initialised layer: equal means copied
            p.normal_(0.0, 0.1)
    dit.save_pretrained(root / "dit", safe_serialization=True)
    pixart = root / "pixart"  # recognised by its config.json alone: refused before any read
    pixart.mkdir()
    (pixart / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    weights = pixart / "diffusion_pytorch_model.safetensors"
    safetensors_numpy.save_file({"x": np.zeros(1, np.float32)}, str(weights))
    return {
        "dit": str(root / "dit"),
        "vae": str(folders.tiny_vae(root / "vae", widths=(8, 8), channels=1)),
        "pixart": str(pixart),
    }


def _config(data_dir, parts, variant="smoke", **generator) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("cfg", "configs/vqdit_img.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    config.data.data_dir = data_dir
    config.tokenizer_from = parts["vae"]  # no tokenizer stage to train
    config.stages = ("generator",)
    config.generator.model.layout = "diffusers"
    config.generator.update({"init_from": parts["dit"], "init_reinit": REINIT, **generator})
    return config


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def test_layout_ours_is_the_dits_own_numerics():
    """The default layout keeps a run's DiT what it was before the key existed."""
    defaults = {f.name: f.default for f in dataclasses.fields(DiT)}
    assert DIT_LAYOUTS["ours"] == {k: defaults[k] for k in DIT_LAYOUTS["ours"]}


def test_the_stage_starts_from_the_checkpoint(tmp_path, data_dir, parts, caplog):
    config = _config(data_dir, parts)
    config.mesh.shape.update(data=4, fsdp=2)  # the checkpoint's leaves land in our shardings
    exp = build_experiment(config, str(tmp_path / "run"))
    dit = builders.build_dit(exp)
    assert (dit.t_freq_shift, dit.pos_embed_col_first, dit.mlp_norm_eps) == (1.0, True, 1e-5)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        spec = generators.generator_stage(exp)
        key = jax.random.key(0)
        init_fn, _, _ = abstract_state(spec, make_optimizer(spec.train_cfg)[0], key, exp.ctx)
        plain = _flat(init_fn(key).params)
        with caplog.at_level(logging.INFO, logger="crossmodal_jax"):
            state = fresh_state(spec, init_fn, key)
    got, ema = _flat(state.params), _flat(state.ema_params)
    want = _flat(pretrained.load(parts["dit"]).params)
    fresh = {p for p in got if p.startswith("cond_embed/") or p.startswith("final_layer/linear/")}
    assert fresh and len(fresh) < len(got)
    for path, value in got.items():
        expected = plain[path] if path in fresh else want[path]
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=path)
        np.testing.assert_array_equal(np.asarray(ema[path]), np.asarray(value), err_msg=path)
        assert value.sharding == plain[path].sharding, path
        buffers = [x.addressable_shards[0].data.unsafe_buffer_pointer() for x in (value, ema[path])]
        assert buffers[0] != buffers[1], path  # the step donates both
    log = caplog.text
    assert "checkpoint: blocks_0, final_layer (2 of 4 parameters), patch_embed, t_embed" in log
    assert "re-initialised: cond_embed (absent from the checkpoint); final_layer/linear/bias" in log
    assert "shape (32, 4) here, (32, 8) in the checkpoint" in log
    assert "checkpoint parameters this DiT does not use: label_embed" in log


def _hook_on_fresh_params(exp):
    """The stage's init_params hook applied to our DiT's abstract params (nothing compiled)."""
    dit = builders.build_dit(exp)
    boxed = jax.eval_shape(dit.init, jax.random.key(0), *builders.example_inputs(exp, dit))
    return init_from.init_params(exp, dit)(nn.meta.unbox(boxed["params"]))


@pytest.mark.parametrize(
    "generator, model, message",
    [
        (
            {},
            {"layout": "ours"},
            r"'diffusers' layout's numerics .*; set generator.model.layout='diff",
        ),
        ({}, {"depth": 2}, r"the checkpoint's DiT has depth=1, generator.model gives 2"),
        ({}, {"hidden_size": 64}, r"has hidden_size=32, generator.model gives 64"),
        (
            {"init_reinit": ("cond_embed",)},
            {},
            r"does not hold 2 parameters .*final_layer/linear/bias \(shape \(4,\) here, \(8,\) "
            r"in the checkpoint\).*; add final_layer to generator.init_reinit",
        ),
        ({"init_reinit": ()}, {}, r"add cond_embed, final_layer to generator.init_reinit"),
        ({"init_reinit": ("label_embed",)}, {}, r"names 'label_embed', not a parameter group"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_line(
    tmp_path, data_dir, parts, generator, model, message
):
    config = _config(data_dir, parts, **generator)
    config.generator.model.update(model)
    exp = build_experiment(config, str(tmp_path / "run"))
    with pytest.raises(UserError, match=message) as e:
        _hook_on_fresh_params(exp)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "variant, generator, model, message",
    [
        ("smoke,masked", {}, {}, r"the masked process's DiT over token ids cannot start from"),
        ("smoke", {}, {"layout": "torch"}, r"unknown DiT layout 'torch' \(generator.model.layout"),
        ("smoke", {"init_from": ""}, {}, r"generator.init_reinit=.* and generator.init_from is"),
    ],
)
def test_config_refusals(data_dir, parts, variant, generator, model, message):
    config = _config(data_dir, parts, variant, **generator)
    config.generator.model.update(model)
    with pytest.raises(UserError, match=message) as e:
        validation.check_names(config)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "source, message",
    [
        ("vae", r"is a vae checkpoint, not a DiT"),
        ("pixart", r"is a PixArt checkpoint: PixArt is supported as a pretrained part .*, not as"),
        ("missing", r"generator.init_from: .*missing: no such file or folder"),
    ],
)
def test_another_kind_is_refused_before_anything_is_written(
    tmp_path, data_dir, parts, source, message
):
    config = _config(data_dir, parts, init_from=parts.get(source, str(tmp_path / "missing")))
    with pytest.raises(UserError, match=message) as e:
        build_experiment(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_joint_runs_refuse_init_from(data_dir, parts):
    config = ml_collections.ConfigDict()
    config.task, config.stages = "joint", ("tokenizer", "generator")
    config.tasks = {"text2image": _config(data_dir, parts)}
    config.tasks.text2image.tokenizer_from = ""  # set at the joint level, refused before ours
    with pytest.raises(UserError, match=r"tasks.text2image.generator.init_from: .* joint runs"):
        joint_run.check_joint(config)
