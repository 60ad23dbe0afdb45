"""Export to diffusers: our class-label DiT -> a DiTTransformer2DModel folder that
`from_pretrained` loads with no missing or unexpected keys and that computes our outputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax import pretrained
from crossmodal_jax.errors import UserError
from crossmodal_jax.models import torch_convert
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.pretrained.export import export_workdir, to_diffusers_dit
from crossmodal_jax.training.sharding import strip_boxes
from tests.pretrained import helpers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

NUM_CLASSES = 10
TOL = 1e-4  # of the reference output's range
# Diffusers-compatible: its timestep frequencies, position-table order and pre-MLP eps.
KWARGS = dict(
    input_size=(8, 8),
    in_channels=4,
    out_channels=8,  # learn-sigma: [eps | variance]
    patch_size=2,
    hidden_size=32,
    depth=2,
    num_heads=2,
    num_classes=NUM_CLASSES,
    t_freq_shift=1.0,
    pos_embed_col_first=True,
    mlp_norm_eps=1e-5,
)


def _inputs():
    rng = np.random.default_rng(1)
    x_BxCxHxW = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
    t_B = np.array([0, 417, 999], np.int64)
    labels_B = np.array([3, 9, NUM_CLASSES], np.int64)  # the last one is the CFG null label
    return x_BxCxHxW, t_B, labels_B


def _load(folder):
    """from_pretrained, insisting that every key was matched."""
    model, info = diffusers.DiTTransformer2DModel.from_pretrained(folder, output_loading_info=True)
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[what], f"{what}: {info[what]}"
    return model.eval()


def _torch_out(model, x, t, y) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).sample
    return out.numpy()


def _flax_out(params, kwargs, x, t, y) -> np.ndarray:
    """Ours, returned channels first like diffusers'."""
    out = jax.jit(DiT(**kwargs).apply)({"params": params}, x.transpose(0, 2, 3, 1), t, y)
    return np.asarray(out).transpose(0, 3, 1, 2)


def test_diffusers_round_trip(tmp_path):
    # A random diffusers DiT (identical per-block embedders, as real checkpoints hold) ->
    # ours -> exported: the same tensors, and the same outputs.
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
        emb0 = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(emb0)
    params, kwargs = torch_convert.from_diffusers(model)
    folder = to_diffusers_dit(params, kwargs, tmp_path / "dit")

    back = _load(folder)
    want, got = model.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and "_diffusers_version" in config
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    x, t, y = _inputs()
    want_out = _torch_out(model, x, t, y)
    assert np.array_equal(_torch_out(back, x, t, y), want_out)


@pytest.fixture(scope="module")
def ours():
    """Our DiT with every parameter initialised then perturbed (zero-init gates and heads
    would otherwise hide most of the maths)."""
    x, t, y = _inputs()
    init = jax.jit(DiT(**KWARGS).init)
    boxed = init(jax.random.key(0), jnp.asarray(x.transpose(0, 2, 3, 1)), t, y)["params"]
    leaves, tree = jax.tree.flatten(strip_boxes(boxed))
    rng = np.random.default_rng(2)  # numpy: one jax.random call per shape compiles for seconds
    leaves = [np.asarray(leaf + rng.normal(0, 0.1, leaf.shape), np.float32) for leaf in leaves]
    return jax.tree.unflatten(tree, leaves)


def test_ours_exports(tmp_path, ours):
    folder = to_diffusers_dit(ours, KWARGS, tmp_path / "nested" / "dit")
    assert sorted(p.name for p in tmp_path.joinpath("nested").iterdir()) == ["dit"]
    x, t, y = _inputs()
    want = _flax_out(ours, KWARGS, x, t, y)
    assert np.ptp(want) > 0.1  # perturbed weights: a non-trivial output
    err = helpers.max_err(_torch_out(_load(folder), x, t, y), want)
    print(f"export max error / range: {err:.2e}")
    assert err <= TOL

    part = pretrained.load(folder)  # our reader gives back the same DiT
    assert part.kind == "dit"
    assert {k: part.config[k] for k in KWARGS} == KWARGS
    jax.tree.map(np.testing.assert_array_equal, part.params, ours)


REFUSED = [
    ({"num_classes": 0}, "caption-conditioned DiT (num_classes=0)"),
    ({"t_freq_shift": 0.0}, "t_freq_shift=0.0: diffusers' DiTTransformer2DModel computes"),
    ({"pos_embed_col_first": False}, "pos_embed_col_first=False"),
    ({"mlp_ratio": 2.0}, "mlp_ratio=2.0"),
    ({"input_size": (8, 16)}, "input_size=(8, 16)"),
    ({"conditioning": "mmdit"}, "conditioning='mmdit'"),
    ({"task_vector": True}, "joint model's view"),
    ({"num_layers": 2}, "unknown DiT setting(s) num_layers"),
    ({"hidden_size": 64}, "params['blocks_0']['adaLN']['bias'] has shape (192,)"),
    ({"depth": 3}, "params lack ['blocks_2']"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=[m[:24] for _, m in REFUSED])
def test_refusals_are_one_line_and_write_nothing(tmp_path, ours, change, message):
    with pytest.raises(UserError) as e:
        to_diffusers_dit(ours, {**KWARGS, **change}, tmp_path / "out" / "dit")
    assert "\n" not in str(e.value)
    assert message in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_folder(tmp_path, ours):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty") as e:
        to_diffusers_dit(ours, KWARGS, tmp_path / "dit")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dit", "keep.txt"]
    (tmp_path / "dit" / "keep.txt").unlink()  # an empty folder is filled
    to_diffusers_dit(ours, KWARGS, tmp_path / "dit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dit"]


def test_workdir_refusals(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        export_workdir(str(tmp_path), tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps({"task": "joint"}))
    with pytest.raises(UserError, match="joint workdir"):
        export_workdir(str(tmp_path), tmp_path / "out")
    captioner = {"task": "image2text", "generator": {"diffusion": {"process": "masked"}}}
    (tmp_path / "config.json").write_text(json.dumps(captioner))
    with pytest.raises(UserError, match="TokenDiT over token ids") as e:
        export_workdir(str(tmp_path), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
