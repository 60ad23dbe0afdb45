"""What a stage's train step will need on a mesh, known before any device runs it: the compiled
step's memory per device and the bytes its collectives move, from ahead-of-time compilation of
the abstract state (nothing is materialised), and the analytic memory to compare them with.

`benchmarks/scale_plan.py` uses it to size DiT-XL/2 and a 2B text→image DiT on 8–256 fake
devices; a researcher can call `plan_step` on any StageSpec and mesh.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from crossmodal_jax.training import sharding
from crossmodal_jax.training.loop import compile_step
from crossmodal_jax.training.stage import RunContext, StageSpec, abstract_state
from crossmodal_jax.training.step import make_optimizer

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}  # fmt: skip
# `%name = <shape or (tuple)> <op>(` where op is a collective, or its async `-start` half.
_INSTRUCTION = re.compile(
    r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", re.MULTILINE
)
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
# Bytes a parameter costs in the persistent state (float32 weights, Adam's two moments, the
# weight EMA) and, during the step, its float32 gradient.
STATE_BYTES_PER_PARAM = 4 + 8 + 4
GRAD_BYTES_PER_PARAM = 4


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string: `bf16[8,128]{1,0}` or a tuple of such."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of the result buffers of each collective kind in one device's compiled program
    (what one device receives a step, before the ring's (n-1)/n factor). The step's programs
    have no loops around collectives (the DiT's blocks are unrolled), so each counts once."""
    out = dict.fromkeys(COLLECTIVES, 0)
    for shape, kind, _ in _INSTRUCTION.findall(hlo_text):
        out[kind] += shape_bytes(shape)
    return out


def analytic_bytes(params: int, shards: int) -> dict[str, float]:
    """Per-device bytes of the state (weights, Adam, EMA) and the gradients when every
    parameter is split `shards` ways (FSDP x tensor) or replicated (shards=1)."""
    return {
        "state": params * STATE_BYTES_PER_PARAM / shards,
        "grads": params * GRAD_BYTES_PER_PARAM / shards,
    }


def plan_step(
    spec: StageSpec, mesh: jax.sharding.Mesh, rules: tuple, batch: dict
) -> dict[str, Any]:
    """Compile (never run) the shared train step of `spec` on `mesh` for a global `batch` of
    ShapeDtypeStructs; returns parameters, XLA's per-device memory and the collectives' bytes."""
    ctx = RunContext("", mesh, rules, seed=0)
    tx, _ = make_optimizer(spec.train_cfg)
    _, abstract, shardings = abstract_state(spec, tx, jax.random.key(0), ctx)
    batch = {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, len(v.shape))
        )
        for k, v in batch.items()
    }
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    compiled, flops = compile_step(spec, tx, shardings, abstract, batch, key, mesh)
    memory = compiled.memory_analysis()
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)))
    return {
        "params": params,
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "flops_per_device": flops,
        "collectives": collective_bytes(compiled.as_text()),
        "replicated": sharding.replicated_parameters(shardings.params, abstract.params, 2**16),
    }
