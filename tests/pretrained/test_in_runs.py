"""Pretrained parts inside a run's Experiment (`tokenizer_from` a checkpoint, `text_encoder`): what
the generator, sampler and evaluation get equals the part itself, and what cannot work is refused
in one line before anything is trained. (The run through `main` is the COCO smoke of
tests/cli/test_coco256_cli.py.)
"""

import importlib.util

import numpy as np
import pytest

from crossmodal_jax import pretrained
from crossmodal_jax.errors import UserError
from crossmodal_jax.run import build_experiment
from crossmodal_jax.stages import builders
from tests.pretrained import folders

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One embedded-dataset cache for the module (the digits are built once)."""
    return str(tmp_path_factory.mktemp("data"))


def _config(name, data_dir, variant="smoke"):
    spec = importlib.util.spec_from_file_location("cfg", f"configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    config.data.data_dir = data_dir
    return config


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny random parts for the 8×8 grayscale digits: 2x downsampling, 4×4 latent grids."""
    root = tmp_path_factory.mktemp("parts")
    return {
        "vqgan": str(folders.tiny_vqgan(root / "vqgan", widths=(8, 8), channels=1)),
        "vae": str(folders.tiny_vae(root / "vae", widths=(8, 8), channels=1)),
        "vae_rgb": str(folders.tiny_vae(root / "vae_rgb", widths=(8, 8))),
        "vae_16x": str(folders.tiny_vae(root / "vae_16x", widths=(8,) * 5, channels=1)),
        "t5": str(folders.tiny_t5(root / "t5", ["the", "digit", "zero", "one", "two", "three"])),
    }


def _images(exp, n=4):
    return exp.first_examples("test", n)["image"]


def test_vqgan_tokenizer_is_the_part(tmp_path, data_dir, parts):
    config = _config("vqdit_img", data_dir)
    config.tokenizer_from = parts["vqgan"]
    exp = build_experiment(config, str(tmp_path / "run"))
    part = pretrained.load(parts["vqgan"])
    assert exp.latent_grid == (4, 4) and exp.tokenizer.vocab_size == 32
    assert builders.latent_hwc(exp) == (4, 4, 4)
    variables = {"params": exp.results["tokenizer"].params}
    x = _images(exp)
    z, ids = exp.tokenizer.apply(variables, x, method="tokenize")
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(part.codes(x)))
    np.testing.assert_allclose(np.asarray(z), np.asarray(part.encode(x)), atol=1e-6)
    rec = exp.tokenizer.apply(variables, z, method="decode")
    np.testing.assert_allclose(np.asarray(rec), np.asarray(part.decode(z)), atol=1e-5)
    snapped = exp.tokenizer.apply(variables, z + 1e-3, method="snap")
    np.testing.assert_allclose(np.asarray(snapped), np.asarray(z), atol=1e-6)


def test_vae_latents_are_scaled_means(tmp_path, data_dir, parts):
    config = _config("vqdit_img", data_dir)
    config.tokenizer_from = parts["vae"]
    exp = build_experiment(config, str(tmp_path / "run"))
    part = pretrained.load(parts["vae"])
    assert exp.tokenizer.vocab_size == 0 and part.scaling_factor != 1.0
    variables = {"params": exp.results["tokenizer"].params}
    x = _images(exp)
    z, _ = exp.tokenizer.apply(variables, x, method="tokenize")
    want = (np.asarray(part.encode(x)) - part.shift_factor) * part.scaling_factor
    np.testing.assert_allclose(np.asarray(z), want, atol=1e-6)
    rec = exp.tokenizer.apply(variables, z, method="decode")
    np.testing.assert_allclose(np.asarray(rec), np.asarray(part.decode(part.encode(x))), atol=1e-5)


def test_text_encoder_condition_is_the_encoder(tmp_path, data_dir, parts):
    """Captions are tokenized by the T5's own tokenizer, read back exactly, and the DiT's
    condition is the encoder's last hidden states."""
    config = _config("vqdit_img", data_dir)
    config.text_encoder = parts["t5"]
    exp = build_experiment(config, str(tmp_path / "run"))
    part = pretrained.load(parts["t5"])
    batch = exp.first_examples("train", 4)
    captions = exp.text.decode_batch(batch["text"])
    assert exp.text.decode(exp.text.encode("the digit three", 32)[0]) == "the digit three"
    ids, mask = part.tokenize(captions, max_length=config.data.text_max_len)
    np.testing.assert_array_equal(batch["text"], ids)
    states, got_mask = builders.caption_condition(exp)(
        {"text_encoder": exp.text_encoder.variables}, batch
    )
    want = part.encode_text(batch["text"], batch["text_mask"])
    np.testing.assert_allclose(np.asarray(states), np.asarray(want), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_mask), batch["text_mask"])
    assert builders.build_dit(exp).cond_feature_dim == 32


@pytest.mark.parametrize(
    "config_name, variant, key, part, message",
    [
        (
            "vqdit_img",
            "smoke,masked",
            "tokenizer_from",
            "vae",
            "is a VAE, which has no code ids for the masked",
        ),
        ("img2txt", "smoke", "tokenizer_from", "vae", "has no code ids to condition on"),
        ("vqdit_img", "smoke", "tokenizer_from", "t5", "is a t5, not an image tokenizer"),
        (
            "vqdit_img",
            "smoke",
            "tokenizer_from",
            "vae_rgb",
            "reads images of 3 channels, this data's have 1",
        ),
        (
            "vqdit_img",
            "smoke",
            "tokenizer_from",
            "vae_16x",
            "downsamples 16x, which does not divide",
        ),
        ("vqdit_img", "smoke", "text_encoder", "vae", "is a vae, not a text encoder"),
        ("img2txt", "smoke", "text_encoder", "t5", "has no caption condition"),
        ("vqdit_img", "smoke,masked", "text_encoder", "t5", "the masked process's DiT conditions"),
    ],
)
def test_impossible_pretrained_runs_are_one_line(
    tmp_path, data_dir, parts, config_name, variant, key, part, message
):
    config = _config(config_name, data_dir, variant)
    if config_name == "img2txt" and key == "tokenizer_from":
        config.generator.model.cond_input = "ids"
    config[key] = parts[part]
    with pytest.raises(UserError, match=message) as e:
        build_experiment(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
