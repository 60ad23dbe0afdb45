"""How a checkpoint's tensors become our parameters: one `Tensor` recipe per parameter leaf.

A port describes its parameters as a nested dict shaped like the Flax params tree whose leaves
say which checkpoint tensor each one is and how its axes move (`perm`, e.g. a torch Linear's
[out, in] weight is our [in, out] kernel). `place` checks every name and shape against the
checkpoint's headers before reading a byte (one-line errors naming the tensor and both shapes),
then reads each parameter straight into its target sharding: with a mesh, every device's block
is read as a slice of the stored tensor, so a process reads only what its devices hold.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained.reader import Checkpoint


@dataclasses.dataclass(frozen=True)
class Tensor:
    """Parameter = checkpoint tensor `name`, axes permuted by `perm`, then reshaped to `shape`.

    A permutation maps slices exactly (sharded reads stay partial); a reshape needs the whole
    tensor, so parameters with `shape` are read whole and sliced in memory.
    """

    name: str
    perm: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None

    def stored_shape(self, ckpt_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(ckpt_shape[i] for i in self.perm) if self.perm else tuple(ckpt_shape)
        return tuple(self.shape) if self.shape is not None else shape

    def read(self, ckpt: Checkpoint, index: tuple | None = None) -> np.ndarray:
        if self.shape is not None or index is None:
            value = ckpt.read(self.name)
            value = value.transpose(self.perm) if self.perm else value
            value = value.reshape(self.shape) if self.shape is not None else value
            return value[index] if index else value
        src = [slice(None)] * len(index)
        for ours, theirs in enumerate(self.perm or range(len(index))):
            src[theirs] = index[ours]
        value = ckpt.read(self.name, tuple(src))
        return value.transpose(self.perm) if self.perm else value


Recipe = Mapping[str, Any]  # nested dict of Tensor (or np.ndarray: a value computed by the port)


# --- recipes for the usual torch layers ------------------------------------------------------


def linear(prefix: str, bias: bool = True) -> dict[str, Tensor]:
    """torch nn.Linear -> flax Dense: weight [out, in] is kernel [in, out]."""
    out = {"kernel": Tensor(f"{prefix}.weight", (1, 0))}
    return out | {"bias": Tensor(f"{prefix}.bias")} if bias else out


def conv(prefix: str, bias: bool = True) -> dict[str, Tensor]:
    """torch nn.Conv2d -> flax Conv: weight [out, in, kh, kw] is kernel [kh, kw, in, out]."""
    out = {"kernel": Tensor(f"{prefix}.weight", (2, 3, 1, 0))}
    return out | {"bias": Tensor(f"{prefix}.bias")} if bias else out


def norm(prefix: str, bias: bool = True) -> dict[str, Tensor]:
    """torch LayerNorm / GroupNorm (weight, bias) -> flax (scale, bias)."""
    out = {"scale": Tensor(f"{prefix}.weight")}
    return out | {"bias": Tensor(f"{prefix}.bias")} if bias else out


def embedding(name: str) -> dict[str, Tensor]:
    """torch nn.Embedding -> flax Embed."""
    return {"embedding": Tensor(name)}


# --- checking and placing --------------------------------------------------------------------


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def check(
    recipe: Recipe,
    abstract_params: Mapping[str, Any],
    ckpt: Checkpoint,
    ignore: Iterable[str] = (),
) -> None:
    """Every parameter has its tensor with the right shape, and every tensor is used or ignored.

    Raises a one-line CheckpointError naming the file and tensor (and both shapes) otherwise.
    """
    want = _flat(abstract_params)
    got = _flat(recipe)
    for path in sorted(set(want) - set(got)):
        raise CheckpointError(f"internal: no recipe for parameter {path!r}")  # a port's bug
    for path in sorted(set(got) - set(want)):
        raise CheckpointError(f"internal: recipe for unknown parameter {path!r}")
    used = set()
    for path, leaf in sorted(got.items()):
        target = tuple(want[path].shape)
        if isinstance(leaf, np.ndarray):
            shape = leaf.shape
            name = path
        else:
            if leaf.name not in ckpt:
                raise CheckpointError(f"{ckpt.path}: missing tensor {leaf.name!r}")
            used.add(leaf.name)
            shape, name = leaf.stored_shape(ckpt.shape(leaf.name)), leaf.name
            if leaf.shape is not None and np.prod(ckpt.shape(leaf.name)) != np.prod(leaf.shape):
                shape = ckpt.shape(leaf.name)
        if tuple(shape) != target:
            raise CheckpointError(
                f"{ckpt.source(name)}: tensor {name!r} has shape {tuple(shape)}, expected "
                f"{target} (parameter {path})"
            )
    patterns = [re.compile(p) for p in ignore]
    extra = [n for n in ckpt.names() if n not in used and not any(p.fullmatch(n) for p in patterns)]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise CheckpointError(f"{ckpt.source(extra[0])}: unexpected tensor {extra[0]!r}{more}")


def place(
    recipe: Recipe,
    abstract_params: Mapping[str, Any],
    ckpt: Checkpoint,
    shardings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The params tree read from `ckpt`: numpy-backed jax arrays on the default device, or, with
    `shardings` (a tree like the params of NamedShardings), arrays laid out on the mesh with each
    device's block read as a slice (`jax.make_array_from_callback`). Call `check` first."""
    want = _flat(abstract_params)
    where = _flat(shardings) if shardings is not None else {}
    out = {}
    for path, leaf in _flat(recipe).items():
        dtype = want[path].dtype

        def read(index: tuple | None, leaf=leaf, dtype=dtype) -> np.ndarray:
            value = leaf[index] if isinstance(leaf, np.ndarray) and index else leaf
            if not isinstance(leaf, np.ndarray):
                value = leaf.read(ckpt, index)
            return np.ascontiguousarray(value, dtype)

        if path in where:
            out[path] = jax.make_array_from_callback(want[path].shape, where[path], read)
        else:
            out[path] = jax.device_put(read(None))
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


def map_tree(fn: Callable[[str, Any], Any], recipe: Recipe) -> dict[str, Any]:
    """A recipe with every leaf replaced by fn(path, leaf) (ports that rename in bulk)."""
    flat = {k: fn(k, v) for k, v in _flat(recipe).items()}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
