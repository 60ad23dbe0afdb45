"""The one table of pretrained kinds: how each is recognised, built, and read from a checkpoint.

A kind is one entry: the architecture names that select it (diffusers' `_class_name`,
transformers' `architectures` / `model_type` in config.json), or a test on the tensor names for
files without a config (an original repository's `.pt` / `.ckpt`); its port's functions; and the
Part class that users call. Adding a pretrained architecture is adding a port file and a row here.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from crossmodal_jax.errors import CheckpointError
from crossmodal_jax.pretrained import clip_text, dit, pixart, t5, vae, vqgan
from crossmodal_jax.pretrained.parts import GeneratorPart, Part, TextEncoderPart, TokenizerPart
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import Recipe


@dataclasses.dataclass(frozen=True)
class Kind:
    """A pretrained architecture.

    - `names`: config.json architecture names that select it;
    - `matches`: for config-less files, whether the tensor names are this kind's;
    - `settings`: checkpoint -> the port's settings (from config.json, else from the tensors),
      refusing what the port does not implement, in one line;
    - `build`: settings -> our Flax module; `init_args`: settings -> abstract inputs for `init`;
    - `recipe`: (settings, checkpoint) -> a `weights.Recipe` for the module's params;
    - `ignore`: regexes of checkpoint tensors that are not parameters of ours (buffers, the
      decoder of a full T5, a VQGAN's training losses);
    - `part`: the Part class users get.
    """

    names: tuple[str, ...]
    matches: Callable[[Checkpoint], bool]
    settings: Callable[[Checkpoint], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    init_args: Callable[[dict[str, Any]], tuple]
    recipe: Callable[[dict[str, Any], Checkpoint], Recipe]
    ignore: tuple[str, ...]
    part: type[Part]


def _port(port: types.ModuleType, part: type[Part]) -> Kind:
    """A port file as a kind: every port defines NAMES, IGNORE, matches, settings, build,
    init_args and recipe (see `Kind`)."""
    return Kind(
        names=port.NAMES,
        matches=port.matches,
        settings=port.settings,
        build=port.build,
        init_args=port.init_args,
        recipe=port.recipe,
        ignore=port.IGNORE,
        part=part,
    )


KINDS: dict[str, Kind] = {
    "vqgan": _port(vqgan, TokenizerPart),
    "vae": _port(vae, TokenizerPart),
    "dit": _port(dit, GeneratorPart),
    "pixart": _port(pixart, GeneratorPart),
    "t5": _port(t5, TextEncoderPart),
    "clip_text": _port(clip_text, TextEncoderPart),
}


def architecture(config: dict[str, Any]) -> str | None:
    """The architecture a config.json names: diffusers' `_class_name`, else transformers'
    `architectures[0]`, else its `model_type`."""
    if "_class_name" in config:
        return str(config["_class_name"])
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return str(archs[0])
    return str(config["model_type"]) if "model_type" in config else None


def kind_of(ckpt: Checkpoint) -> str:
    """The kind of a checkpoint, or a one-line error naming what was found."""
    if ckpt.folder is not None:  # a folder always has its config.json (the reader insists)
        arch = architecture(ckpt.config)
        for name, kind in KINDS.items():
            if arch in kind.names or ckpt.config.get("model_type") in kind.names:
                return name
        known = sorted({n for kind in KINDS.values() for n in kind.names})
        raise CheckpointError(
            f"{ckpt.path / 'config.json'}: unknown architecture {arch!r} (known: {', '.join(known)})"
        )
    for name, kind in KINDS.items():
        if kind.matches(ckpt):
            return name
    raise CheckpointError(
        f"{ckpt.path}: tensors of no known architecture (first: {ckpt.names()[:1]}); a "
        "diffusers/transformers folder needs its config.json"
    )
