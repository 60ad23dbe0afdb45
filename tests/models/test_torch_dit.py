"""Our DiT equals PyTorch DiT (diffusers and facebookresearch layouts) on the same random weights.

Needs the `bench` extra (torch, diffusers); skipped without it.
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from crossmodal_jax.errors import CheckpointError, UserError  # noqa: E402
from crossmodal_jax.models import torch_convert  # noqa: E402
from crossmodal_jax.models.dit import DiT  # noqa: E402

NUM_CLASSES = 10
TOL = 1e-4


def _tiny_diffusers_dit(norm_eps: float = 1e-5, seed: int = 0):
    """A 2-layer DiT with every weight random (zero-init adaLN would hide most of the maths)."""
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,  # learn_sigma: [eps | variance]
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_eps=norm_eps,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
        # Real converted checkpoints hold identical per-block embedders; ours is shared.
        emb0 = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(emb0)
    return model


def _inputs():
    rng = np.random.default_rng(1)
    x_BxCxHxW = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
    t_B = np.array([0, 417, 999], np.int64)
    labels_B = np.array([3, 9, NUM_CLASSES], np.int64)  # the last one is the CFG null label
    return x_BxCxHxW, t_B, labels_B


def _torch_out(model, x, t, y) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).sample
    return out.permute(0, 2, 3, 1).numpy()  # channels last, like ours


def _flax_out(params, kwargs, x, t, y) -> np.ndarray:
    model = DiT(**kwargs)
    out = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), t, y)
    return np.asarray(out)


def _assert_close(got, want):
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= TOL, f"max abs difference {err}"


@pytest.fixture(scope="module")
def diffusers_model():
    return _tiny_diffusers_dit()


def test_diffusers_model_matches(diffusers_model):
    params, kwargs = torch_convert.from_diffusers(diffusers_model)
    assert kwargs["out_channels"] == 8 and kwargs["num_classes"] == NUM_CLASSES
    assert kwargs["t_freq_shift"] == 1.0 and kwargs["mlp_norm_eps"] == 1e-5
    x, t, y = _inputs()
    want = _torch_out(diffusers_model, x, t, y)
    assert np.abs(want).max() > 0.1  # random weights: a non-trivial output
    _assert_close(_flax_out(params, kwargs, x, t, y), want)


def _facebook_state_dict(model) -> dict:
    """The facebookresearch/DiT names for a diffusers model's weights (built independently of
    the converter's renaming)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    emb = "transformer_blocks.0.norm1.emb."
    fb = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
        "pos_embed": model.pos_embed.pos_embed.clone(),  # [1, T, D] buffer
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for kind in ("weight", "bias"):
            fb[f"t_embedder.mlp.{i}.{kind}"] = sd[f"{emb}timestep_embedder.{name}.{kind}"]
    for n in range(len(model.transformer_blocks)):
        b = f"transformer_blocks.{n}."
        names = {
            "attn.proj": "attn1.to_out.0",
            "mlp.fc1": "ff.net.0.proj",
            "mlp.fc2": "ff.net.2",
            "adaLN_modulation.1": "norm1.linear",
        }
        for kind in ("weight", "bias"):
            for ours, theirs in names.items():
                fb[f"blocks.{n}.{ours}.{kind}"] = sd[f"{b}{theirs}.{kind}"]
            fb[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat(
                [sd[f"{b}attn1.to_{c}.{kind}"] for c in "qkv"], dim=0
            )
    return fb


def test_facebook_checkpoint_matches(tmp_path):
    # A diffusers model switched to facebookresearch's numerics (timestep frequencies
    # 10000^(-i/128) and 1e-6 in every LayerNorm) computes exactly facebookresearch's DiT.
    model = _tiny_diffusers_dit(norm_eps=1e-6, seed=2)
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    path = tmp_path / "DiT-tiny.pt"
    torch.save(_facebook_state_dict(model), path)

    # Checkpoints do not store the head count; hidden size 32 is no DiT-S/B/L/XL preset.
    with pytest.raises(CheckpointError, match="not a DiT preset"):
        torch_convert.load_facebook_checkpoint(str(path))
    params, kwargs = torch_convert.load_facebook_checkpoint(str(path), num_heads=2)
    assert kwargs["input_size"] == (8, 8) and kwargs["depth"] == 2
    assert kwargs["t_freq_shift"] == 0.0 and kwargs["mlp_norm_eps"] == 1e-6
    x, t, y = _inputs()
    want = _torch_out(model, x, t, y)
    _assert_close(_flax_out(params, kwargs, x, t, y), want)
    # diffusers' timestep frequencies differ by more than the tolerance: the option matters.
    shifted = _flax_out(params, {**kwargs, "t_freq_shift": 1.0}, x, t, y)
    assert np.abs(shifted - want).max() > 10 * TOL


def test_training_checkpoint_is_unwrapped(tmp_path, diffusers_model):
    fb = _facebook_state_dict(diffusers_model)
    path = tmp_path / "train.pt"
    torch.save({"model": {k: v * 0 for k, v in fb.items()}, "ema": fb}, path)
    params, _ = torch_convert.load_facebook_checkpoint(str(path), num_heads=2)
    want = fb["x_embedder.proj.bias"].numpy()
    np.testing.assert_array_equal(params["patch_embed"]["proj"]["bias"], want)


_UNPICKLED = []


def _mark():
    _UNPICKLED.append(True)
    return "ran"


class _Payload:
    def __reduce__(self):
        return (_mark, ())


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x_embedder.proj.weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(UserError) as info:
        torch_convert.load_facebook_checkpoint(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "_mark" in message
    assert _UNPICKLED == []  # the payload's code never ran


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    for bad in (path, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError) as info:
            torch_convert.load_facebook_checkpoint(str(bad))
        assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_differing_block_embedders_are_refused(diffusers_model):
    sd = dict(diffusers_model.state_dict())
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
    sd[key] = sd[key] + 1.0
    with pytest.raises(CheckpointError, match="differs from"):
        torch_convert.from_diffusers(sd, dict(diffusers_model.config))


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(CheckpointError, match=r'pip install -e "\.\[bench\]"'):
        torch_convert.load_facebook_checkpoint(str(tmp_path / "x.pt"))


def test_pretrained_load_diffusers_folder_and_mesh(tmp_path, diffusers_model):
    """`pretrained.load` of a save_pretrained folder: the `dit` kind, equal to PyTorch on one
    device and on a data x fsdp x tensor mesh (parameters sharded)."""
    from crossmodal_jax import pretrained
    from tests.pretrained.helpers import mesh_2x2x2

    diffusers_model.save_pretrained(tmp_path, safe_serialization=True)
    x, t, y = _inputs()
    want = _torch_out(diffusers_model, x, t, y)
    part = pretrained.load(tmp_path)
    assert part.kind == "dit"
    _assert_close(np.asarray(part(x.transpose(0, 2, 3, 1), t, y)), want)
    sharded = pretrained.load(tmp_path, mesh=mesh_2x2x2())
    kernel = sharded.params["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert tuple(kernel.sharding.spec) == ("fsdp", "tensor")
    _assert_close(np.asarray(sharded(x.transpose(0, 2, 3, 1), t, y)), want)


def test_pretrained_load_facebook_file(tmp_path):
    """A facebookresearch `.pt` (no config.json) is recognised by its tensor names; DiT-S's
    hidden size 384 gives its 6 heads."""
    from crossmodal_jax import pretrained

    torch.manual_seed(3)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_eps=1e-6,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift = 0
    torch.save(_facebook_state_dict(model), tmp_path / "DiT-S-2.pt")
    part = pretrained.load(tmp_path / "DiT-S-2.pt")
    assert part.kind == "dit" and part.config["num_heads"] == 6
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 4)).astype(np.float32)
    t, y = np.array([3, 900]), np.array([1, NUM_CLASSES])
    _assert_close(np.asarray(part(x.transpose(0, 2, 3, 1), t, y)), _torch_out(model, x, t, y))
