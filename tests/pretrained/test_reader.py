"""The checkpoint reader and the recipe checks: folder layouts, sharded indexes, dtypes, slices,
and the one-line errors for bad files (missing file or tensor, extra tensor, wrong shape, unknown
architecture, a pickle holding code). No torch needed except where a test says so."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from crossmodal_jax import pretrained
from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained import weights
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.training.sharding import EMBED, MLP, strip_boxes
from tests.pretrained.helpers import mesh_2x2x2

RNG = np.random.default_rng(0)
W = {
    "fc.weight": RNG.normal(size=(6, 4)).astype(np.float32),
    "fc.bias": np.arange(6.0, dtype=np.float32),
}


class Tiny(nn.Module):
    """One Dense with logical axes: the smallest module a recipe can describe."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(
            6,
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED, MLP)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (MLP,)),
            name="fc",
        )(x)


def _abstract():
    boxed = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.zeros((1, 4)))["params"]
    return boxed, strip_boxes(boxed)


RECIPE = {"fc": weights.linear("fc")}


def _load_tiny(path, **kw):
    ckpt = Checkpoint(path)
    boxed, abstract = _abstract()
    weights.check(RECIPE, abstract, ckpt, kw.pop("ignore", ()))
    return weights.place(RECIPE, abstract, ckpt, **kw), ckpt


def test_linear_recipe_transposes(tmp_path):
    save_file(W, tmp_path / "w.safetensors")
    params, _ = _load_tiny(tmp_path / "w.safetensors")
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    got = Tiny().apply({"params": params}, x)
    np.testing.assert_allclose(got, x @ W["fc.weight"].T + W["fc.bias"], rtol=1e-6, atol=1e-6)


def test_sharded_placement_reads_slices(tmp_path):
    """On a mesh each device's block is a slice of the stored tensor; fewer bytes are read per
    device than the tensor holds, and the assembled array equals the whole."""
    save_file(W, tmp_path / "w.safetensors")
    mesh = mesh_2x2x2()
    boxed, abstract = _abstract()
    from crossmodal_jax.training.sharding import DEFAULT_RULES, logical_shardings

    shardings = logical_shardings(boxed, mesh, DEFAULT_RULES)
    ckpt = Checkpoint(tmp_path / "w.safetensors")
    params = weights.place(RECIPE, abstract, ckpt, shardings)
    kernel = params["fc"]["kernel"]
    assert tuple(kernel.sharding.spec) == ("fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(kernel), W["fc.weight"].T)
    shard = kernel.addressable_shards[0]
    assert shard.data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(shard.data), W["fc.weight"].T[shard.index])


def test_bf16_and_fp16_are_upcast(tmp_path):
    import ml_dtypes

    stored = {
        "fc.weight": W["fc.weight"].astype(ml_dtypes.bfloat16),
        "fc.bias": W["fc.bias"].astype(np.float16),
    }
    save_file(stored, tmp_path / "w.safetensors")
    params, ckpt = _load_tiny(tmp_path / "w.safetensors")
    assert params["fc"]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(params["fc"]["kernel"]), stored["fc.weight"].astype(np.float32).T
    )
    assert ckpt.nbytes() == 24 * 2 + 6 * 2


def test_sharded_index_folder(tmp_path):
    """A transformers-style folder whose weights are split over files by an index."""
    save_file({"fc.weight": W["fc.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"fc.bias": W["fc.bias"]}, tmp_path / "model-00002-of-00002.safetensors")
    index = {
        "weight_map": {
            "fc.weight": "model-00001-of-00002.safetensors",
            "fc.bias": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text("{}")
    params, ckpt = _load_tiny(tmp_path)
    np.testing.assert_array_equal(np.asarray(params["fc"]["bias"]), W["fc.bias"])
    assert ckpt.source("fc.bias").endswith("model-00002-of-00002.safetensors")


@pytest.mark.parametrize(
    "stored, match",
    [
        ({"fc.weight": W["fc.weight"]}, r"w\.safetensors: missing tensor 'fc\.bias'"),
        (W | {"fc.extra": np.zeros(2, np.float32)}, r"unexpected tensor 'fc\.extra'"),
        (
            {"fc.weight": np.zeros((6, 5), np.float32), "fc.bias": W["fc.bias"]},
            r"tensor 'fc\.weight' has shape \(5, 6\), expected \(4, 6\)",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_bad_tensors_one_line(tmp_path, stored, match):
    save_file(stored, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=match) as e:
        _load_tiny(tmp_path / "w.safetensors")
    assert "\n" not in str(e.value)


def test_ignored_tensors_pass(tmp_path):
    save_file(W | {"decoder.x": np.zeros(2, np.float32)}, tmp_path / "w.safetensors")
    _load_tiny(tmp_path / "w.safetensors", ignore=(r"decoder\..*",))


def test_bad_files_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        pretrained.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json: no such file"):
        pretrained.load(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text('{"_class_name": "VQModel"}')
    with pytest.raises(CheckpointError, match="no weights file"):
        pretrained.load(tmp_path / "empty")
    (tmp_path / "pipe" / "vae").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "vae" / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointError, match=r"is a diffusers pipeline; name one of its parts' folders \(vae\)"
    ):
        pretrained.load(tmp_path / "pipe")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        pretrained.load(tmp_path / "junk.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown weights format '.npz'"):
        pretrained.load(tmp_path / "w.npz")


def test_unknown_architecture_one_line(tmp_path):
    save_file(W, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(
        CheckpointError,
        match=r"config\.json: unknown architecture 'UNet2DConditionModel' \(known: ",
    ):
        pretrained.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="unknown architecture None"):
        pretrained.load(tmp_path)
    save_file(W, tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="tensors of no known architecture"):
        pretrained.load(tmp_path / "bare.safetensors")


class Payload:
    """A pickled object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_with_code_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"fc.weight": torch.zeros(6, 4), "evil": Payload()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: refused to unpickle .*print") as e:
        pretrained.load(tmp_path / "model.pt")
    assert "\n" not in str(e.value)


def test_torch_state_dict_files(tmp_path):
    """A Lightning-style {"state_dict": ...} .ckpt reads like a safetensors file."""
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in W.items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    params, ckpt = _load_tiny(tmp_path / "last.ckpt")
    np.testing.assert_array_equal(np.asarray(params["fc"]["kernel"]), W["fc.weight"].T)
    assert ckpt.info("fc.weight") == ((6, 4), "F32")
