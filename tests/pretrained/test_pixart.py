"""Peer equality: the "pixart" kind against diffusers' PixArtTransformer2DModel with the same
random weights (every parameter normal, std 0.1, so zero-initialised layers hide no maths)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from crossmodal_jax import pretrained
from crossmodal_jax.errors import CheckpointError
from tests.pretrained import helpers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Plain PixArt-Σ-like model: caption projection, no size conditions, learned sigma (8 = 2 x 4).
PLAIN = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    cross_attention_dim=32,
    caption_channels=24,
    norm_type="ada_norm_single",
)
# The other branches: PixArt-α 1024px's resolution/aspect-ratio embedders (hidden size divisible
# by 3), no caption projection, no q/k/v bias, a set interpolation_scale and norm_eps.
SIZED = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=8,
    num_layers=1,
    num_attention_heads=3,
    attention_head_dim=8,
    cross_attention_dim=16,
    caption_channels=None,
    attention_bias=False,
    norm_eps=1e-5,
    interpolation_scale=2,
    use_additional_conditions=True,
    norm_type="ada_norm_single",
)


def _save(folder, config: dict, seed: int):
    torch.manual_seed(seed)
    model = diffusers.PixArtTransformer2DModel(**config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _reference(model, x, t, captions, mask=None, resolution=None, ratio=None) -> np.ndarray:
    """diffusers' output for channels-last x, transposed back to channels last."""
    added = {"resolution": None, "aspect_ratio": None}
    if resolution is not None:
        added = {"resolution": torch.tensor(resolution), "aspect_ratio": torch.tensor(ratio)}
    with torch.no_grad():
        out = model(
            torch.tensor(x.transpose(0, 3, 1, 2)),
            encoder_hidden_states=torch.tensor(captions),
            timestep=torch.tensor(t),
            encoder_attention_mask=None if mask is None else torch.tensor(mask),
            added_cond_kwargs=added,
        ).sample
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixart")
    model = _save(folder, PLAIN, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    t = np.array([0, 417, 999, 250], np.int64)
    captions = rng.standard_normal((4, 5, 24)).astype(np.float32)
    # Row 1 has padding (random values there must not matter); row 3 is fully masked, which
    # diffusers' -10000 bias turns into attending to every key.
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [0, 0, 0, 0, 0]], np.int64)
    want = _reference(model, x, t, captions, mask)
    part = pretrained.load(folder)
    got = np.asarray(part(x, t, captions, mask))
    return folder, part, (x, t, captions, mask), got, want


def test_pixart_equals_diffusers(plain):
    _, part, _, got, want = plain
    assert part.kind == "pixart"
    assert part.config["out_channels"] == 8 and got.shape == (4, 8, 8, 8)
    err = helpers.max_err(got, want)
    print(f"pixart max error / range: {err:.2e}")
    assert err < 1e-4


def test_pixart_sharded_equals_unsharded(plain):
    folder, _, inputs, got, _ = plain
    part = pretrained.load(folder, mesh=helpers.mesh_2x2x2())
    sharded = [
        path
        for path, leaf in jax.tree_util.tree_flatten_with_path(part.params)[0]
        if not leaf.sharding.is_fully_replicated
    ]
    assert any("attn1" in jax.tree_util.keystr(p) and "kernel" in str(p) for p in sharded)
    np.testing.assert_allclose(np.asarray(part(*inputs)), got, atol=1e-5, rtol=1e-5)


def test_pixart_size_conditions_non_square(tmp_path):
    model = _save(tmp_path, SIZED, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 12, 4)).astype(np.float32)  # a 4 x 6 patch grid
    t = np.array([999.0, 3.5], np.float32)
    captions = rng.standard_normal((2, 3, 16)).astype(np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.int64)
    resolution = np.array([[64.0, 96.0], [64.0, 96.0]], np.float32)
    ratio = np.array([[64 / 96], [64 / 96]], np.float32)
    want = _reference(model, x, t, captions, mask, resolution, ratio)
    part = pretrained.load(tmp_path)
    assert part.config["use_additional_conditions"]
    err = helpers.max_err(part(x, t, captions, mask, resolution, ratio), want)
    print(f"pixart (size conditions, 4x6 grid) max error / range: {err:.2e}")
    assert err < 1e-4


def _copy_with(folder, dest, **changes):
    dest.mkdir()
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", dest)
    config = json.loads((folder / "config.json").read_text()) | changes
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_pixart_legacy_class_name_and_refusals(plain, tmp_path):
    folder, part, *_ = plain
    # Older PixArt-α folders: Transformer2DModel with norm_type "ada_norm_single".
    legacy = pretrained.load(
        _copy_with(folder, tmp_path / "legacy", _class_name="Transformer2DModel")
    )
    assert legacy.kind == "pixart"
    jax.tree.map(np.testing.assert_array_equal, legacy.params, part.params)

    dit_like = _copy_with(
        folder, tmp_path / "dit", _class_name="Transformer2DModel", norm_type="ada_norm_zero"
    )
    with pytest.raises(CheckpointError, match="norm_type 'ada_norm_zero' is not PixArt") as e:
        pretrained.load(dit_like)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="activation_fn='geglu' is not supported"):
        pretrained.load(_copy_with(folder, tmp_path / "geglu", activation_fn="geglu"))
