"""Peer equality of the "t5" pretrained kind with transformers' T5 / UMT5 encoders.

Tiny models with every weight random (so a wrong transpose, bucket or activation shows) are
saved with a locally built Unigram tokenizer (no hub access), loaded by `pretrained.load`, and
compared on a padded batch of texts of different lengths. T5's encoder defines every position,
padded ones too (a padded query still attends to the real keys), so all positions are compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossmodal_jax import pretrained
from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained import t5 as t5_port
from tests.pretrained.helpers import assert_tokenize_equals, max_err, mesh_2x2x2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["a cat", "the cat sat on a mat", "a dog <extra_id_0> ran far away from a big cat"]
SIZES = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
)


def _tokenizer():
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [(w, -1.0) for w in ("▁a", "▁cat", "▁the", "▁sat", "▁on", "at", "▁big")]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=2, model_max_length=16)


def _randomize(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            one = 1.0 if "norm" in name else 0.0
            p.copy_(one + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _save(folder, model_cls, config_cls, seed: int, **overrides):
    tok = _tokenizer()
    config = config_cls(vocab_size=len(tok), **(SIZES | overrides))
    model = _randomize(model_cls(config), seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    out = {
        "v1_1": _save(
            root / "v1_1",
            transformers.T5EncoderModel,
            transformers.T5Config,
            0,
            feed_forward_proj="gated-gelu",
        ),
        "relu": _save(
            root / "relu",
            transformers.T5EncoderModel,
            transformers.T5Config,
            1,
            feed_forward_proj="relu",
        ),
        "full": _save(
            root / "full",
            transformers.T5ForConditionalGeneration,
            transformers.T5Config,
            2,
            feed_forward_proj="gated-gelu",
        ),
    }
    if hasattr(transformers, "UMT5EncoderModel"):
        out["umt5"] = _save(
            root / "umt5", transformers.UMT5EncoderModel, transformers.UMT5Config, 3
        )
    return root, out


def _reference(model, ids, mask):
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    with torch.no_grad():
        out = encoder(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("name", ["v1_1", "relu", "full", "umt5"])
def test_encoder_equals_transformers(folders, name):
    root, models = folders
    if name not in models:
        pytest.skip("this transformers has no UMT5EncoderModel")
    part = pretrained.load(root / name)
    assert part.kind == "t5"
    ids, mask = part.tokenize(TEXTS)
    assert mask.sum(1).tolist() != [ids.shape[1]] * len(TEXTS)  # really padded
    got = np.asarray(part.encode_text(ids, mask))
    want = _reference(models[name], ids, mask)
    err = max_err(got, want)
    print(f"t5 {name}: max error {err:.2e} of the range")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), ids.shape[1], 32)
    assert err < 1e-4


def test_tokenize_equals_transformers(folders):
    root, _ = folders
    part = pretrained.load(root / "v1_1")
    reference = transformers.AutoTokenizer.from_pretrained(root / "v1_1")
    long = " ".join(["a big cat sat on the mat"] * 4)  # past model_max_length 16: truncated
    assert_tokenize_equals(
        part, reference, ((TEXTS, None), (TEXTS + [long], None), (TEXTS, 12), ([long], 10))
    )


def test_mesh_loads_sharded_and_equal(folders):
    root, _ = folders
    plain = pretrained.load(root / "v1_1")
    sharded = pretrained.load(root / "v1_1", mesh=mesh_2x2x2())
    kernel = sharded.params["block_0_mlp_wi_0"]["kernel"]
    assert not kernel.sharding.is_fully_replicated  # (embed -> fsdp, mlp -> tensor)
    assert sharded.params["block_0_attention"]["q"]["kernel"].sharding.spec[1] == "tensor"
    ids, mask = plain.tokenize(TEXTS)
    # Sharded contractions sum in another order: equal within 1e-5 of the outputs' range.
    err = max_err(sharded.encode_text(ids, mask), plain.encode_text(ids, mask))
    print(f"t5 on a 2x2x2 mesh: max difference {err:.2e} of the range")
    assert err < 1e-5


def test_tied_embedding_under_either_name(folders, tmp_path):
    """Files from older transformers store `encoder.embed_tokens.weight` (alone or with
    `shared.weight`): the same table is read either way."""
    from safetensors.numpy import load_file, save_file

    root, models = folders
    tensors = load_file(root / "v1_1" / "model.safetensors")
    ids, mask = pretrained.load(root / "v1_1").tokenize(TEXTS)
    want = _reference(models["v1_1"], ids, mask)
    for keep_shared in (False, True):
        folder = tmp_path / f"shared_{keep_shared}"
        folder.mkdir()
        for f in (root / "v1_1").iterdir():
            if f.suffix == ".json":
                (folder / f.name).write_bytes(f.read_bytes())
        renamed = dict(tensors)
        renamed["encoder.embed_tokens.weight"] = tensors["shared.weight"]
        if not keep_shared:
            del renamed["shared.weight"]
        save_file(renamed, folder / "model.safetensors")
        got = np.asarray(pretrained.load(folder).encode_text(ids, mask))
        assert max_err(got, want) < 1e-4


def test_relative_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    length = 700
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    for buckets, distance in ((32, 128), (8, 20), (64, 256)):
        want = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
        np.testing.assert_array_equal(t5_port.relative_buckets(length, buckets, distance), want)


def test_refusals_are_one_line(folders, tmp_path):
    root, _ = folders
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((root / "v1_1" / "model.safetensors").read_bytes())
    config = json.loads((root / "v1_1" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"feed_forward_proj": "gated-tanhx"}))
    with pytest.raises(CheckpointError, match="feed_forward_proj") as e:
        pretrained.load(folder)
    assert "\n" not in str(e.value)
    (folder / "config.json").write_text(json.dumps(config))
    part = pretrained.load(folder)  # loads, but the folder has no tokenizer
    with pytest.raises(CheckpointError, match="tokenizer.json") as e:
        part.tokenize(TEXTS)
    assert "\n" not in str(e.value)
