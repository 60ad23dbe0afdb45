"""Peer equality of the "vqgan" kind with diffusers' VQModel and with taming-transformers' own
Encoder / Decoder / VectorQuantizer: tiny models with every weight random (std 0.1), saved as a
diffusers folder or as a Lightning-style `last.ckpt`, read by `pretrained.load` and run on the
same inputs; plus sharded loading and refusals."""

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


def _randomize(module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.1)


def _codebook_near(latents, codebook) -> None:
    """Random weights put every latent nearest one code; codes drawn near the latents themselves
    (random positions plus noise) keep many ids in use, so code equality means something."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    rows = torch.randint(0, flat.shape[0], (codebook.shape[0],))
    with torch.no_grad():
        codebook.copy_(flat[rows] + 0.1 * flat.std() * torch.randn_like(codebook))


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(folder, images, codes, quantized latents, their decoding) of a random tiny VQModel, with
    attention in its coarse levels as well as the middle and 8 GroupNorm groups."""
    torch.manual_seed(0)
    model = diffusers.VQModel(
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        vq_embed_dim=8,
        num_vq_embeddings=64,
        norm_num_groups=8,
        sample_size=16,
    ).eval()
    _randomize(model)
    images = _images()
    with torch.no_grad():
        h = model.encode(_nchw(images)).latents
        _codebook_near(h, model.quantize.embedding.weight)
        quant, _, (_, _, ids) = model.quantize(h)
        decoded = model.decode(quant, force_not_quantize=True).sample
    codes = ids.reshape(2, 8, 8).numpy()
    folder = tmp_path_factory.mktemp("vqmodel")
    model.save_pretrained(folder, safe_serialization=True)
    return folder, images, codes, _nhwc(quant), _nhwc(decoded)


@pytest.fixture(scope="module")
def part(reference):
    return pretrained.load(reference[0])


def test_matches_diffusers(reference, part):
    _, images, codes, quant, decoded = reference
    assert part.kind == "vqgan"
    got_codes = part.codes(images)
    assert got_codes.dtype == np.int32 and got_codes.shape == (2, 8, 8)
    assert len(np.unique(codes)) > 8  # the comparison below means something
    np.testing.assert_array_equal(got_codes, codes)
    latents = part.encode(images)
    errors = {"encode": max_err(latents, quant), "decode": max_err(part.decode(quant), decoded)}
    print("vqgan (diffusers) max errors (of range):", errors)
    assert latents.dtype == np.float32 and latents.shape == (2, 8, 8, 8)
    assert max(errors.values()) < TOL, errors


def test_sharded_load_equals_one_device(reference, part):
    _, images, _, quant, _ = reference
    sharded = pretrained.load(reference[0], mesh=mesh_2x2x2())
    kernel = sharded.params["decoder"]["up_0_res_0"]["conv1"]["kernel"]
    assert not kernel.sharding.is_fully_replicated, kernel.sharding
    np.testing.assert_array_equal(sharded.codes(images), part.codes(images))
    np.testing.assert_allclose(sharded.decode(quant), part.decode(quant), atol=1e-5, rtol=1e-5)


def test_taming_checkpoint(tmp_path):
    """taming-transformers' VQModel as saved by Lightning: {"state_dict": ...} in last.ckpt, with
    `loss.*` tensors to ignore and no config (the ddconfig is inferred from the tensors)."""
    model_py = pytest.importorskip("taming.modules.diffusionmodules.model")
    quantize_py = pytest.importorskip("taming.modules.vqvae.quantize")
    torch.manual_seed(1)
    ddconfig = dict(
        ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), in_channels=3,
        resolution=16, z_channels=4, double_z=False, dropout=0.0,
    )  # fmt: skip
    encoder, decoder = model_py.Encoder(**ddconfig).eval(), model_py.Decoder(**ddconfig).eval()
    quantize = quantize_py.VectorQuantizer(64, 8, beta=0.25)
    quant_conv, post_quant_conv = torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(8, 4, 1)
    modules = dict(
        encoder=encoder, decoder=decoder, quantize=quantize, quant_conv=quant_conv,
        post_quant_conv=post_quant_conv,
    )  # fmt: skip
    for module in modules.values():
        _randomize(module)
    images = _images(1)
    with torch.no_grad():
        _codebook_near(quant_conv(encoder(_nchw(images))), quantize.embedding.weight)
        quant, _, (_, _, ids) = quantize(quant_conv(encoder(_nchw(images))))
        decoded = decoder(post_quant_conv(quant))
    codes = ids.reshape(2, 8, 8).numpy()
    state = {}
    for prefix, module in modules.items():
        state |= {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    state |= {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(2, 3)}
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")

    part = pretrained.load(tmp_path / "last.ckpt")
    assert part.kind == "vqgan" and part.config["layout"] == "taming"
    assert part.config["down_attention"] == [False, True]
    assert part.config["up_attention"] == [True, False]
    assert len(np.unique(codes)) > 8
    np.testing.assert_array_equal(part.codes(images), codes)
    errors = {
        "encode": max_err(part.encode(images), _nhwc(quant)),
        "decode": max_err(part.decode(_nhwc(quant)), _nhwc(decoded)),
    }
    print("vqgan (taming) max errors (of range):", errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize(
    "change, key",
    [
        ({"norm_type": "spatial"}, "norm_type"),
        ({"up_block_types": ["UpBlock2D"] * 2}, "up_block_types"),
    ],
)
def test_refuses_what_it_does_not_implement(reference, tmp_path, change, key):
    folder = tmp_path / "vq"
    shutil.copytree(reference[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(CheckpointError, match=key) as err:
        pretrained.load(folder)
    assert "\n" not in str(err.value)
