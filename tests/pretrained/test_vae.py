"""Peer equality of the "vae" kind with diffusers' AutoencoderKL: a tiny model with every weight
random (std 0.1, so no zero-initialised layer hides a mistake), saved as a diffusers folder, read
by `pretrained.load` and run on the same inputs; plus the same weights in the latent-diffusion
(taming) layout, sharded loading, and refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from crossmodal_jax import pretrained
from crossmodal_jax.errors import CheckpointError
from tests.pretrained.helpers import max_err, mesh_2x2x2

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4  # of the reference's range (DESIGN §4)


def _nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _nchw(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(folder, model, images, latents, torch mean, logvar, decoding) of a random tiny VAE."""
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,  # latent-diffusion's fixed count, so one model serves both layouts
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=0.25,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("vae")
    model.save_pretrained(folder, safe_serialization=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    latents = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(_nchw(images)).latent_dist
        decoded = _nhwc(model.decode(_nchw(latents)).sample)
    return folder, model, images, latents, _nhwc(dist.mean), _nhwc(dist.logvar), decoded


@pytest.fixture(scope="module")
def part(reference):
    return pretrained.load(reference[0])


def test_matches_diffusers(reference, part):
    _, _, images, latents, mean, logvar, decoded = reference
    assert part.kind == "vae"
    assert (part.scaling_factor, part.shift_factor) == (0.5, 0.25)
    got_mean, got_logvar = part.call("moments", images)
    got = part.encode(images)
    errors = {
        "mean": max_err(got, mean),
        "logvar": max_err(got_logvar, logvar),
        "decode": max_err(part.decode(latents), decoded),
    }
    print("vae max errors (of range):", errors)
    assert got.dtype == np.float32 and got.shape == (2, 8, 8, 4)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(got_mean))
    assert max(errors.values()) < TOL, errors


def test_sharded_load_equals_one_device(reference, part):
    _, _, images, latents, *_ = reference
    sharded = pretrained.load(reference[0], mesh=mesh_2x2x2())
    kernel = sharded.params["encoder"]["down_1_res_0"]["conv1"]["kernel"]
    assert not kernel.sharding.is_fully_replicated, kernel.sharding
    np.testing.assert_allclose(sharded.encode(images), part.encode(images), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sharded.decode(latents), part.decode(latents), atol=1e-5, rtol=1e-5)


def _ldm_name(name: str) -> str:
    """diffusers AutoencoderKL name -> latent-diffusion's (taming encoder/decoder) name."""
    part, rest = name.split(".", 1)
    if part not in ("encoder", "decoder"):
        return name
    for old, new in (
        ("mid_block.resnets.0.", "mid.block_1."),
        ("mid_block.resnets.1.", "mid.block_2."),
        ("mid_block.attentions.0.", "mid.attn_1."),
        ("conv_norm_out.", "norm_out."),
        (".resnets.", ".block."),
        ("downsamplers.0.", "downsample."),
        ("upsamplers.0.", "upsample."),
        ("conv_shortcut.", "nin_shortcut."),
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
        ("down_blocks.", "down."),
    ):
        rest = rest.replace(old, new)
    if rest.startswith("up_blocks."):
        _, i, tail = rest.split(".", 2)
        rest = f"up.{1 - int(i)}.{tail}"  # taming stores decoder levels finest first
    return f"{part}.{rest}"


def test_latent_diffusion_layout(reference, tmp_path):
    """The same weights as a config-less latent-diffusion file (taming names, attention as 1x1
    convs, training `loss.*` tensors to ignore) give diffusers' outputs. This checks the name
    mapping of that layout; its modules are taming's, checked against taming itself in
    test_vqgan.py."""
    _, model, images, latents, mean, _, decoded = reference
    state = {}
    for name, value in model.state_dict().items():
        if ".attentions." in name and value.ndim == 2:
            value = value[:, :, None, None]
        state[_ldm_name(name)] = value.clone()
    state["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": state}, tmp_path / "vae.ckpt")
    ldm = pretrained.load(tmp_path / "vae.ckpt")
    assert ldm.kind == "vae" and ldm.config["conv_attention"]
    errors = {
        "mean": max_err(ldm.encode(images), mean),
        "decode": max_err(ldm.decode(latents), decoded),
    }
    print("latent-diffusion layout max errors (of range):", errors)
    assert max(errors.values()) < TOL, errors


def test_old_diffusers_attention_names(reference, tmp_path):
    """diffusers < 0.14 folders (many hub VAEs) name the attention query/key/value/proj_attn."""
    from safetensors.torch import save_file

    old = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    state = {}
    for name, value in reference[1].state_dict().items():
        for new, was in old.items():
            name = name.replace(f".{new}", f".{was}")
        state[name] = value.contiguous()
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    shutil.copy(reference[0] / "config.json", tmp_path / "config.json")
    images, mean = reference[2], reference[4]
    assert max_err(pretrained.load(tmp_path).encode(images), mean) < TOL


@pytest.mark.parametrize(
    "change, key",
    [
        ({"act_fn": "gelu"}, "act_fn"),
        ({"down_block_types": ["CrossAttnDownBlock2D"] * 2}, "down_block_types"),
    ],
)
def test_refuses_what_it_does_not_implement(reference, tmp_path, change, key):
    folder = tmp_path / "vae"
    shutil.copytree(reference[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(CheckpointError, match=key) as err:
        pretrained.load(folder)
    assert "\n" not in str(err.value)
