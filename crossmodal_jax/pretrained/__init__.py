"""Pretrained parts read from the PyTorch ecosystem's checkpoints into our Flax modules.

    from crossmodal_jax import pretrained
    part = pretrained.load("path/to/sd-vae")        # a diffusers/transformers folder or a file
    part.kind                                       # "vqgan", "vae", "t5", "clip_text", "pixart", "dit"
    latents = part.encode(images)                   # tokenizers; text encoders: encode_text/tokenize

`.safetensors` need no torch; an original repository's `.pt`/`.ckpt` is read with
`torch.load(weights_only=True)`. Every name and shape is checked against the file's header before
any tensor is read; with `mesh=`, each parameter is read straight into its sharding (DESIGN §4
"Pretrained parts"; docs/pretrained.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
from jax.sharding import Mesh

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained.kinds import KINDS, kind_of
from crossmodal_jax.pretrained.parts import GeneratorPart, Part, TextEncoderPart, TokenizerPart
from crossmodal_jax.pretrained.random_parts import is_random, resolve
from crossmodal_jax.pretrained.reader import TORCH_SUFFIXES, Checkpoint, read_json
from crossmodal_jax.pretrained.weights import check, place
from crossmodal_jax.training.sharding import DEFAULT_RULES, logical_shardings, strip_boxes

__all__ = [
    "KINDS",
    "Checkpoint",
    "GeneratorPart",
    "Part",
    "TextEncoderPart",
    "TokenizerPart",
    "is_checkpoint",
    "load",
]

WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` names a pretrained checkpoint rather than one of our workdirs: a weights
    file, a folder whose config.json is a diffusers/transformers one (ours holds a `task`), or
    a tiny random-weight part named `random:<kind>` (random_parts.py)."""
    if is_random(path):
        return True
    path = Path(path)
    if path.is_file() or path.suffix in WEIGHT_SUFFIXES:
        return path.suffix in WEIGHT_SUFFIXES
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "task" not in read_json(config)
    except CheckpointError:
        return False


def load(
    path: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    rules: Sequence = DEFAULT_RULES,
    kind: str | None = None,
) -> Part:
    """A pretrained part from a diffusers/transformers folder or a checkpoint file.

    `kind` forces the kind (else it is read from config.json or recognised from the tensor
    names). With `mesh`, parameters are sharded by our logical-axis `rules` as they are read.
    `random:<kind>` is a tiny random-weight part, written once to the user's cache.
    """
    ckpt = Checkpoint(resolve(path))
    name = kind or kind_of(ckpt)
    if name not in KINDS:
        raise ValueError(f"unknown pretrained kind {name!r}; known: {', '.join(KINDS)}")
    entry = KINDS[name]
    settings = entry.settings(ckpt)
    module = entry.build(settings)
    boxed = jax.eval_shape(
        lambda *a: module.init(jax.random.key(0), *a), *entry.init_args(settings)
    )["params"]
    abstract = strip_boxes(boxed)
    recipe = entry.recipe(settings, ckpt)
    check(recipe, abstract, ckpt, entry.ignore)
    shardings = None
    if mesh is not None:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shardings = logical_shardings(boxed, mesh, rules)
    params = place(recipe, abstract, ckpt, shardings)
    part = entry.part(name, module, params, settings, ckpt.path, mesh=mesh, rules=rules)
    # What this process read, of the checkpoint's stored bytes (benchmarks/pretrained_load.py).
    part.bytes_read, part.nbytes = ckpt.bytes_read, ckpt.nbytes()
    return part
