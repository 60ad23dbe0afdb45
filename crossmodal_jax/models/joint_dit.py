"""One Diffusion Transformer for several tasks: a shared trunk, and a view per task.

A view is the task's own single-task model (dit.DiT over image latents, token_dit.TokenDiT over
caption or code ids) whose input layers, condition embedder and output head are its own, while
its adaLN-Zero blocks and timestep embedder are the trunk's, shared by every view, and a learned
task vector is added to its adaLN vector. `JointDiT(task=name)` is called exactly like that
task's single-task model, so the objectives, samplers and evaluation written for one task run
unchanged on the joint weights; every `JointDiT` of the same `views` has one parameter tree:

    {"blocks_0", ..., "t_embed", "views_<task>": {its embedders, head, "task_embed"}}

A view's `init` creates the trunk and that view; `merge_view_variables` joins them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal_jax.models.conditioning import make_blocks
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.models.layers import TimestepEmbedder
from crossmodal_jax.models.token_dit import TokenDiT

VIEW_CLASSES: dict[str, type[nn.Module]] = {"DiT": DiT, "TokenDiT": TokenDiT}
# Fields of a single-task model that describe the trunk, not the view: the joint model's own.
TRUNK_FIELDS = (
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "dtype",
    "remat",
    "conditioning",
    "attention",
)
_SHARED = ("shared_blocks", "shared_t_embed", "task_vector")


def view_spec(name: str, model: nn.Module) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
    """(task, model class, its fields) of an unbound single-task model: one entry of `views`."""
    cls = type(model).__name__
    if cls not in VIEW_CLASSES:
        raise ValueError(f"task {name!r}: a joint model has no view of a {cls}")
    fields = tuple(
        (f.name, getattr(model, f.name))
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name", *TRUNK_FIELDS, *_SHARED) and f.init
    )
    return name, cls, fields


class JointDiT(nn.Module):
    """`__call__(*args, **kwargs)` = the `task` view's call (see DiT / TokenDiT)."""

    specs: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...]  # view_spec entries
    task: str = ""
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    conditioning: str = "cross_attention"
    attention: str = "xla"

    def setup(self):
        trunk = {f: getattr(self, f) for f in TRUNK_FIELDS}
        self.blocks = make_blocks(
            self.depth,
            self.hidden_size,
            self.num_heads,
            self.mlp_ratio,
            self.dtype,
            self.remat,
            conditioning=self.conditioning,
            attention=self.attention,
        )
        self.t_embed = TimestepEmbedder(self.hidden_size, dtype=self.dtype)
        self.views = {
            name: VIEW_CLASSES[cls](
                **dict(fields),
                **trunk,
                shared_blocks=self.blocks,
                shared_t_embed=self.t_embed,
                task_vector=True,
            )
            for name, cls, fields in self.specs
        }

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.specs)

    def standalone_view(self) -> nn.Module:
        """The `task` view as an unbound model of its own (for its attributes: no parameters)."""
        for name, cls, fields in self.specs:
            if name == self.task:
                trunk = {f: getattr(self, f) for f in TRUNK_FIELDS}
                return VIEW_CLASSES[cls](**dict(fields), **trunk, parent=None)
        raise ValueError(f"unknown task {self.task!r}; this model has {self.task_names}")

    @property
    def seq_len(self) -> int:  # TokenDiT views: what the masked stage's init reads
        return self.standalone_view().seq_len

    @property
    def cond_input_shape(self) -> tuple[int, int]:
        return self.standalone_view().cond_input_shape

    def __call__(self, *args, **kwargs) -> jax.Array:
        if self.task not in self.task_names:
            raise ValueError(f"unknown task {self.task!r}; this model has {self.task_names}")
        return self.views[self.task](*args, **kwargs)


def merge_view_variables(trees: Mapping[str, dict]) -> dict:
    """One joint variable tree from each view's own `init` (task -> variables): every view's
    own parameters, and the trunk's from the first task's tree (a view's init creates the trunk
    too; all but one copy are dropped)."""
    merged: dict = {}
    for tree in trees.values():
        for collection, variables in tree.items():
            target = merged.setdefault(collection, {})
            for name, value in variables.items():
                target.setdefault(name, value)
    return merged
