"""Peer equality of the "clip_text" pretrained kind with transformers' CLIP text encoders.

Tiny models with every weight random are saved with a locally built byte-level BPE tokenizer (no
hub access), loaded by `pretrained.load`, and compared on a padded batch of texts of different
lengths. The tokenizer pads on the right, so every query keeps its causal, unpadded keys and
transformers defines every position: all positions are compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossmodal_jax import pretrained
from tests.pretrained.helpers import assert_tokenize_equals, max_err, mesh_2x2x2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")

TEXTS = ["a photo of a cat", "a dog", "two cats, one dog and 3 photos!"]
WORDS = ("a", "photo", "of", "cat", "dog", "two", "cats", "one", "and", "photos")
SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
)


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout in miniature: the 256 byte symbols, each with `</w>` (end of word), the
    merges spelling a few whole words left to right, then the two special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        done = word[0] if len(word) > 1 else word + "</w>"
        for i, c in enumerate(word[1:], 1):
            nxt = c + "</w>" if i == len(word) - 1 else c
            if (done, nxt) not in merges:
                merges.append((done, nxt))
                symbols.append(done + nxt)
            done += nxt
    symbols = list(dict.fromkeys(symbols)) + ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def _tokenizer():
    vocab, merges = _vocab_and_merges()
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def _randomize(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            one = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(one + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _save(folder, model_cls, seed: int, **overrides):
    tok = _tokenizer()
    config = transformers.CLIPTextConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=24,
        **(SIZES | overrides),
    )
    model = _randomize(model_cls(config), seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return root, {
        "plain": _save(root / "plain", transformers.CLIPTextModel, 0),
        "projected": _save(
            root / "projected", transformers.CLIPTextModelWithProjection, 1, hidden_act="gelu"
        ),
    }


def _reference(model, ids, mask):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )


@pytest.mark.parametrize("name", ["plain", "projected"])
def test_encoder_equals_transformers(folders, name):
    root, models = folders
    part = pretrained.load(root / name)
    assert part.kind == "clip_text"
    ids, mask = part.tokenize(TEXTS)
    assert mask.sum(1).tolist() != [ids.shape[1]] * len(TEXTS)  # really padded
    got = np.asarray(part.encode_text(ids, mask))
    want = _reference(models[name], ids, mask)
    err = max_err(got, want.last_hidden_state.numpy())
    print(f"clip_text {name}: max error {err:.2e} of the range")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), ids.shape[1], 32)
    assert err < 1e-4
    # The pooled output: the end-of-text state (projected when the checkpoint has text_projection).
    pooled = np.asarray(part.call("pooled", ids, mask))
    theirs = want.text_embeds if name == "projected" else want.pooler_output
    assert max_err(pooled, theirs.numpy()) < 1e-4


def test_tokenize_equals_transformers(folders):
    root, _ = folders
    part = pretrained.load(root / "plain")
    reference = transformers.AutoTokenizer.from_pretrained(root / "plain")
    long = " ".join(["a photo of a cat"] * 5)  # past model_max_length 16: truncated
    assert_tokenize_equals(
        part, reference, ((TEXTS, None), (TEXTS + [long], None), (TEXTS, 12), ([long], 8))
    )


def test_diffusers_layout_with_vocab_and_merges(folders, tmp_path):
    """Stable Diffusion folders: the encoder in text_encoder/, the tokenizer beside it in
    tokenizer/ as vocab.json + merges.txt (no tokenizer.json)."""
    root, _ = folders
    encoder, tokenizer = tmp_path / "text_encoder", tmp_path / "tokenizer"
    encoder.mkdir()
    tokenizer.mkdir()
    for f in ("config.json", "model.safetensors"):
        (encoder / f).write_bytes((root / "plain" / f).read_bytes())
    vocab, merges = _vocab_and_merges()
    (tokenizer / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (tokenizer / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 16,
        "pad_token": "<|endoftext|>",
    }
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    part = pretrained.load(encoder)
    reference = transformers.CLIPTokenizer.from_pretrained(tokenizer)
    for max_length in (None, 12):
        padding = "max_length" if max_length else True
        want = reference(TEXTS, padding=padding, truncation=True, max_length=max_length)
        ids, mask = part.tokenize(TEXTS, max_length=max_length)
        np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
        np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"]))


def test_mesh_loads_sharded_and_equal(folders):
    root, _ = folders
    plain = pretrained.load(root / "plain")
    sharded = pretrained.load(root / "plain", mesh=mesh_2x2x2())
    kernel = sharded.params["layers_0"]["fc1"]["kernel"]
    assert not kernel.sharding.is_fully_replicated  # (embed -> fsdp, mlp -> tensor)
    assert sharded.params["layers_0"]["q"]["kernel"].sharding.spec[1] == "tensor"
    ids, mask = plain.tokenize(TEXTS)
    # Sharded contractions sum in another order: equal within 1e-5 of the outputs' range.
    err = max_err(sharded.encode_text(ids, mask), plain.encode_text(ids, mask))
    print(f"clip_text on a 2x2x2 mesh: max difference {err:.2e} of the range")
    assert err < 1e-5


def test_full_clip_model_loads_its_text_tower(tmp_path):
    """A CLIPModel folder (text_config nested, image tower beside): the text tower is read."""
    tok = _tokenizer()
    text = dict(
        SIZES,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = _randomize(transformers.CLIPModel(config), 4)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    part = pretrained.load(tmp_path)
    ids, mask = part.tokenize(TEXTS)
    with torch.no_grad():
        want = model.text_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )
        embeds = model.get_text_features(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )
    err = max_err(part.encode_text(ids, mask), want.last_hidden_state.numpy())
    print(f"clip_text CLIPModel: max error {err:.2e} of the range")
    assert err < 1e-4
    embeds = getattr(embeds, "pooler_output", embeds)
    assert max_err(part.call("pooled", ids, mask), embeds.numpy()) < 1e-4
