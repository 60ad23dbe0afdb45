"""A latent generator that starts from a converted DiT checkpoint (`generator.init_from`).

Fine-tuning a facebookresearch/DiT `.pt` or a diffusers `DiTTransformer2DModel` folder as the
Gaussian or flow process's DiT. At the stage's fresh start only (`StageSpec.init_params`, called
by `training.stage.fresh_state`; a resume restores its own checkpoint and reads nothing here):

1. the checkpoint is read by `pretrained.load` onto the run's mesh, refused in one line if it is
   not a DiT, or if its architecture or its layout numerics (generator.model.layout) are not
   generator.model's: those cannot be mended by re-initialising a few parameters;
2. it is laid over the freshly initialised parameters. A parameter the checkpoint has at the
   same path with the same shape takes the checkpoint's value. Every other one keeps its fresh
   value, which is allowed only under a group named in `generator.init_reinit`: a caption DiT
   has no class-label table in the checkpoint (`cond_embed`), a learn-sigma checkpoint outputs
   twice the channels (`final_layer/linear`). Asking for it makes a silently half-random
   generator impossible;
3. the log names the groups taken, those re-initialised and why, and the checkpoint's parameters
   this DiT does not use (a class DiT's `label_embed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import traverse_util

from crossmodal_jax import pretrained
from crossmodal_jax.errors import CheckpointError, UserError, one_line
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models.dit import DIT_LAYOUTS, DiT
from crossmodal_jax.pretrained.kinds import kind_of

log = logging.getLogger("crossmodal_jax")

Params = Mapping[str, Any]

# What must equal generator.model's for the checkpoint's blocks to be ours (the latent grid need
# not: the position embedding is a fixed sin-cos table, recomputed for any grid).
ARCHITECTURE = ("hidden_size", "depth", "num_heads", "patch_size", "mlp_ratio")
SHOWN = 3  # paths named in a one-line refusal or per group in the log


def check_kind(path: str) -> None:
    """Refuse, in one line and without reading a tensor, a checkpoint that is not a DiT."""
    try:
        kind = kind_of(pretrained.Checkpoint(path))
    except CheckpointError as e:  # no such file, an unknown architecture
        raise UserError(f"generator.init_from: {one_line(e)}") from None
    if kind == "pixart":
        raise UserError(
            f"generator.init_from={path!r} is a PixArt checkpoint: PixArt is supported as a "
            "pretrained part (pretrained.load), not as a run's generator; give a DiT checkpoint"
        )
    if kind != "dit":
        raise UserError(
            f"generator.init_from={path!r} is a {kind} checkpoint, not a DiT (a "
            "facebookresearch .pt or a diffusers DiTTransformer2DModel folder)"
        )


def _numerics(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={settings[k]}" for k in DIT_LAYOUTS["ours"])


def check_part(path: str, settings: Mapping[str, Any], dit: DiT, layout: str) -> None:
    """The converted checkpoint's DiT kwargs (`part.config`) against the generator's DiT."""
    for key in ARCHITECTURE:
        if settings[key] != getattr(dit, key):
            raise UserError(
                f"generator.init_from={path!r}: the checkpoint's DiT has {key}="
                f"{settings[key]}, generator.model gives {getattr(dit, key)}; set "
                "generator.model to the checkpoint's architecture"
            )
    theirs = {k: settings[k] for k in DIT_LAYOUTS[layout]}
    if theirs == DIT_LAYOUTS[layout]:
        return
    match = [name for name, numerics in DIT_LAYOUTS.items() if numerics == theirs]
    if match:
        raise UserError(
            f"generator.init_from={path!r} was trained with the {match[0]!r} layout's numerics "
            f"({_numerics(theirs)}), generator.model.layout={layout!r} computes with "
            f"({_numerics(DIT_LAYOUTS[layout])}); set generator.model.layout={match[0]!r}"
        )
    raise UserError(
        f"generator.init_from={path!r}: no generator.model.layout has the checkpoint's numerics "
        f"({_numerics(theirs)}; layouts: {', '.join(DIT_LAYOUTS)})"
    )


def _group(path: str) -> str:
    return path.split("/", 1)[0]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def overlay(fresh: Params, loaded: Params, reinit: Sequence[str], source: str) -> dict[str, Any]:
    """`fresh` with every leaf that `loaded` has at the same path and shape replaced by it (placed
    as the fresh leaf is); every other leaf must lie under a group of `reinit`. Logs what came
    from where."""
    ours = traverse_util.flatten_dict(fresh, sep="/")
    theirs = traverse_util.flatten_dict(loaded, sep="/")
    groups = sorted({_group(p) for p in ours})
    unknown = [g for g in reinit if g not in groups]
    if unknown:
        raise UserError(
            f"generator.init_reinit names {unknown[0]!r}, not a parameter group of the "
            f"generator's DiT (its groups: {', '.join(groups)})"
        )
    out: dict[str, Any] = {}
    why: dict[str, str] = {}  # our leaves kept fresh -> why the checkpoint's could not be used
    for path, leaf in sorted(ours.items()):  # sorted: the log and errors list paths in order
        value = theirs.get(path)
        if value is not None and _shape(value) == _shape(leaf):
            out[path] = jax.device_put(value, getattr(leaf, "sharding", None)).astype(leaf.dtype)
            continue
        out[path] = leaf
        why[path] = (
            "absent from the checkpoint"
            if value is None
            else f"shape {_shape(leaf)} here, {_shape(value)} in the checkpoint"
        )
    refused = [p for p in why if _group(p) not in reinit]
    if refused:
        shown = "; ".join(f"{p} ({why[p]})" for p in refused[:SHOWN])
        more = f"; and {len(refused) - SHOWN} more" if len(refused) > SHOWN else ""
        need = sorted({_group(p) for p in refused})
        raise UserError(
            f"generator.init_from={source!r} does not hold {len(refused)} parameters of the "
            f"generator's DiT ({shown}{more}); add {', '.join(need)} to generator.init_reinit "
            "to re-initialise them"
        )
    _log_overlay(source, ours, theirs, why)
    return traverse_util.unflatten_dict(out, sep="/")


def _log_overlay(
    source: str, ours: Mapping[str, Any], theirs: Mapping[str, Any], why: Mapping[str, str]
) -> None:
    """One line each: the groups taken (with how much of a group taken in part), what was
    re-initialised and why (a group the checkpoint lacks whole is named once), and what of the
    checkpoint is left over."""
    our_groups = sorted({_group(p) for p in ours})
    taken, fresh = [], []
    for group in our_groups:
        leaves = sorted(p for p in ours if _group(p) == group)
        kept = [p for p in leaves if p in why]
        if len(kept) < len(leaves):
            part = f" ({len(leaves) - len(kept)} of {len(leaves)} parameters)" if kept else ""
            taken.append(group + part)
        if not kept:
            continue
        if all(p not in theirs for p in leaves):
            fresh.append(f"{group} (absent from the checkpoint)")
            continue
        fresh.extend(f"{p} ({why[p]})" for p in kept[:SHOWN])
        if len(kept) > SHOWN:
            fresh.append(f"and {len(kept) - SHOWN} more of {group}")
    log.info(
        "[generator] init_from %s: taken from the checkpoint: %s",
        source,
        ", ".join(taken) or "none",
    )
    if fresh:
        log.info("[generator] init_from %s: re-initialised: %s", source, "; ".join(fresh))
    unused = sorted(p for p in theirs if p not in ours)
    if unused:
        whole = {_group(p) for p in unused} - set(our_groups)
        named = sorted(whole) + [p for p in unused if _group(p) not in whole]
        log.info(
            "[generator] init_from %s: checkpoint parameters this DiT does not use: %s",
            source,
            ", ".join(named),
        )


def init_params(exp: Experiment, dit: DiT) -> Callable[[Params], dict[str, Any]] | None:
    """The stage's `init_params` hook for `generator.init_from` (None without it). Building it
    reads nothing: the stage is also built to resume, sample or export a workdir."""
    gen = exp.config.generator
    if not gen.init_from:
        return None
    path, reinit, layout = str(gen.init_from), tuple(gen.init_reinit), gen.model.layout

    def from_checkpoint(fresh: Params) -> dict[str, Any]:
        check_kind(path)
        part = pretrained.load(path, kind="dit", mesh=exp.ctx.mesh, rules=exp.ctx.rules)
        check_part(path, part.config, dit, layout)
        return overlay(fresh, part.params, reinit, path)

    return from_checkpoint
