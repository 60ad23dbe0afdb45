"""pytorch-fid's InceptionV3 weights -> variables of models/inception.py's Flax InceptionV3.

The file: `pt_inception-2015-12-05-6726825d.pth`, the one pytorch-fid (mseitzer/pytorch-fid)
downloads from its GitHub release `fid_weights` (TensorFlow's inception-2015-12-05 graph, the
original FID network, ported to PyTorch). Nothing is downloaded here: the user fetches it once and
gives its path, as is (read with `torch.load(weights_only=True)`; torch is optional, the `bench`
extra, imported only then) or converted where torch is installed to a `.npz` with the same keys:

    python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth');
    np.savez('inception.npz', **{k: v.numpy() for k, v in sd.items()})"

Names map one to one (the Flax modules carry the PyTorch attribute names):
- `X.conv.weight` [O, I, kh, kw] -> params[X...]["conv"]["kernel"] [kh, kw, I, O];
- `X.bn.weight` / `X.bn.bias` -> params[X...]["bn"]["scale"] / ["bias"];
- `X.bn.running_mean` / `running_var` -> batch_stats[X...]["bn"]["mean"] / ["var"];
- `fc.weight` [1008, 2048] -> params["fc"]["kernel"] [2048, 1008], `fc.bias` -> ["bias"];
- `*.num_batches_tracked` are ignored. Any other missing, extra or mis-shaped key is a
  CheckpointError naming it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.errors import CheckpointError, one_line
from crossmodal_jax.models.inception import MIN_SIZE, InceptionV3
from crossmodal_jax.models.torch_convert import _to_numpy

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"

_CONVERT_HINT = (
    f"python -c \"import torch, numpy as np; sd = torch.load('{WEIGHTS_FILE}'); "
    "np.savez('inception.npz', **{k: v.numpy() for k, v in sd.items()})\""
)


_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HWIO conv kernel -> OIHW; [in, out] Linear kernel -> [out, in]."""
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def _from_torch(a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    return a.T if a.ndim == 2 else a


@functools.cache
def _layout() -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch name -> (flax collection, path inside it, flax shape), from the model's own tree."""
    abstract = jax.eval_shape(
        InceptionV3().init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32),
    )
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        keys = tuple(str(p.key) for p in path)
        collection, *modules, name = keys
        torch_name = ".".join([*modules, _TORCH_LEAF[(collection, name)]])
        out[torch_name] = (collection, tuple(keys[1:]), tuple(leaf.shape))
    return out


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The pytorch-fid state dict's names and shapes (num_batches_tracked aside)."""
    return {name: _torch_shape(shape) for name, (_, _, shape) in _layout().items()}


def _hint(name: str, shape: tuple[int, ...]) -> str:
    if (name == "fc.weight" and shape[:1] == (1000,)) or name.startswith("AuxLogits."):
        return (
            f" (this looks like torchvision's ImageNet InceptionV3; FID needs pytorch-fid's "
            f"{WEIGHTS_FILE})"
        )
    return ""


def convert_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
    """pytorch-fid FID-Inception state dict (tensors or arrays) -> {"params", "batch_stats"}."""
    arrays = {
        str(k): v for k, v in state_dict.items() if not str(k).endswith("num_batches_tracked")
    }
    layout = _layout()
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, (collection, path, flax_shape) in layout.items():
        want = _torch_shape(flax_shape)
        if name not in arrays:
            raise CheckpointError(f"{source}: missing weight {name!r} (expected shape {want})")
        value = _to_numpy(arrays[name], name)
        if value.shape != want:
            raise CheckpointError(
                f"{source}: weight {name!r} has shape {value.shape}, expected {want}"
                + _hint(name, value.shape)
            )
        node = variables[collection]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(_from_torch(value))
    extra = [k for k in arrays if k not in layout]
    if extra:
        shape = tuple(getattr(arrays[extra[0]], "shape", ()))
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{source}: unexpected weight {extra[0]!r} with shape {shape}{more}"
            + _hint(extra[0], shape)
        )
    return variables


def _read_torch(path: str) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a PyTorch file needs torch, which is not installed; convert it to "
            f".npz where torch is installed: {_CONVERT_HINT}"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip/torch errors alike: a bad user file
        reason = f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({reason})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


RANDOM = "random:inception"  # random weights: the smoke runs' FID plumbing, not a measurement


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """pytorch-fid names and shapes with random values: He-scaled convs, BatchNorm scales and
    variances in [0.5, 1.5] and small offsets, so the features stay O(1) and depend on the image
    (larger BatchNorm offsets make every image's features nearly the same constant)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in torch_state_dict_shapes().items():
        if name.endswith(("bn.weight", "running_var")):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            continue
        if name.endswith("conv.weight"):
            scale = np.sqrt(2.0 / np.prod(shape[1:]))
        elif name == "fc.weight":
            scale = 1.0 / np.sqrt(shape[1])
        else:  # bn.bias, running_mean, fc.bias
            scale = 0.01
        out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    return out


def load_inception_params(path: str | os.PathLike) -> dict:
    """pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (needs torch) or its `.npz`
    conversion (keys = the state-dict names) -> variables for `features` / `inception_outputs`;
    `random:inception`: random weights (`random_state_dict`), for smoke runs.

    Nothing is downloaded: the file comes from pytorch-fid's GitHub release `fid_weights`.
    """
    path = os.fspath(path)
    if path == RANDOM:
        return convert_state_dict(random_state_dict(), source=path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path}: no such file (expected pytorch-fid's InceptionV3 weights {WEIGHTS_FILE} "
            "or their .npz conversion)"
        )
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                state_dict = {k: npz[k] for k in npz.files}
        except Exception as e:  # noqa: BLE001 - zip/format errors alike: a bad user file
            raise CheckpointError(
                f"{path}: not a readable .npz ({type(e).__name__}: {one_line(e)})"
            ) from None
    else:
        state_dict = _read_torch(path)
    return convert_state_dict(state_dict, source=path)
