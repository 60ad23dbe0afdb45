"""A workdir's resolved config: written when a run starts, read by resumes and the sample CLI, and
compared with the config of a later run of the same workdir; and the fingerprint of the user data
its first run trained on."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from typing import Any

import jax
import ml_collections

from crossmodal_jax.config import blocks
from crossmodal_jax.data.fingerprint import changed
from crossmodal_jax.errors import UserError
from crossmodal_jax.logs.writers import write_json
from crossmodal_jax.tasks import JOINT

log = logging.getLogger("crossmodal_jax")

# Keys a resumed run may change: which stages run, how long, how it logs, evaluates and samples, and
# on which mesh, with which sharding rules and attention kernel (checkpoints restore onto any mesh
# and fit every kernel). Everything else changes what is trained.
SAFE_KEYS = (
    "stages",
    "*.train.steps",
    "*.train.log_every",
    "*.train.images_every",
    "*.train.checkpoint_every",
    "*.train.keep_checkpoints",
    "*.train.skip_nonfinite",
    "eval.*",
    "generator.sample.*",
    "generator.model.attention",  # the same maths by another kernel: checkpoints fit every one
    "data.worker_count",
    "data.allow_changed_data",
    "data.data_dir",
    "mesh.*",
    "peak_tflops",
    "profile_steps",
    "compilation_cache_dir",
)


def write_resolved_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Process 0 writes config.json, whole or not at all: the other processes may be reading it
    meanwhile (check_workdir) and must not see half a file."""
    if jax.process_index() == 0:
        resolved = json.loads(config.to_json_best_effort())
        write_json(os.path.join(workdir, "config.json"), resolved, indent=2)


def _block_defaults(config: dict) -> dict:
    """The defaults of the config blocks a resolved config is made of (run_blocks, model_blocks)."""
    out: dict = {"eval": blocks.evaluation().to_dict(), **blocks.monitoring().to_dict()}
    if config.get("task") == JOINT:  # a whole single-task config per task, and the joint trunk
        out["generator"] = {
            "model": blocks.joint_trunk().to_dict(),
            "train": blocks.train().to_dict(),
            "loss_weights": {name: 1.0 for name in config.get("tasks", {})},
        }
        out["tasks"] = {name: _block_defaults(c) for name, c in config.get("tasks", {}).items()}
        out["tokenizer_of"] = {name: "" for name in config.get("tasks", {})}
        out["tokenizer_from"] = {name: "" for name in config.get("tasks", {})}
        return out
    out.update(blocks.sources().to_dict())
    data = config.get("data")
    if (
        isinstance(data, dict) and "name" in data and "modality" in data
    ):  # data.audio.*, tfds_*, ...
        out["data"] = blocks.data(data["name"], data["modality"]).to_dict()
    for name, stage in config.items():
        if not isinstance(stage, dict) or "train" not in stage:
            continue
        if name == "generator":
            process = stage.get("diffusion", {}).get("process", "gaussian")
            out[name] = blocks.generator(process).to_dict()
        else:  # tokenizer stages
            out[name] = {
                "model": blocks.tokenizer_model().to_dict(),
                "train": blocks.train().to_dict(),
                "adversarial": blocks.adversarial().to_dict(),
            }
    return out


def _add_missing(tree: dict, defaults: dict) -> dict:
    for key, value in defaults.items():
        if key not in tree:
            tree[key] = value
        elif isinstance(value, dict) and isinstance(tree[key], dict):
            _add_missing(tree[key], value)
    return tree


def with_new_keys(config: dict) -> dict:
    """A workdir's config with the keys added to the config blocks since it was written, at their
    defaults. A new key's default keeps the old behaviour (the rule for adding one), so a workdir
    of an earlier version resumes, samples and compares as it was trained."""

    def plain(tree: dict) -> dict:  # tuples as lists, as config.json holds them
        return json.loads(json.dumps(tree))

    return _add_missing(plain(config), plain(_block_defaults(config)))


def load_resolved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (written by `run`), with keys added since then at
    their defaults (`with_new_keys`)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"no config.json in workdir {workdir!r}: train it with crossmodal_jax.main")
    with open(path) as f:
        return ml_collections.ConfigDict(with_new_keys(json.load(f)))


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _safe(key: str) -> bool:
    # A joint config's task configs (`tasks.<task>.*`) have the same safe keys as single ones.
    parts = key.split(".")
    if parts[0] == "tasks" and len(parts) > 2:
        key = ".".join(parts[2:])
    return any(fnmatch.fnmatch(key, pattern) for pattern in SAFE_KEYS)


def config_diff(old: dict, new: dict) -> list[str]:
    """Keys whose values differ (JSON-normalised), excluding SAFE_KEYS."""
    a, b = _flatten(old), _flatten(json.loads(json.dumps(new)))
    changed = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<missing>") != b.get(key, "<missing>") and not _safe(key):
            changed.append(f"{key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return changed


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse to resume a workdir that was trained with a different config, or whose checkpoints
    cannot be checked against this config (config.json deleted or unreadable)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        trained = checkpointed_stages(workdir)
        if trained:
            raise UserError(
                f"workdir {workdir} holds {', '.join(trained)} checkpoints but no config.json to "
                "check this config against; restore config.json or use a new --workdir"
            )
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(
            f"workdir {workdir}: config.json is unreadable ({e}); use a new --workdir"
        ) from e
    changed = config_diff(with_new_keys(old), json.loads(config.to_json_best_effort()))
    if changed:
        shown = "; ".join(changed[:3]) + (
            f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({shown}); use a new --workdir"
        )


def checkpointed_stages(workdir: str) -> list[str]:
    """Stages of a workdir with at least one checkpoint step (`<stage>/checkpoints/<step>`)."""
    if not os.path.isdir(workdir):
        return []
    found = []
    for stage in sorted(os.listdir(workdir)):
        ckpts = os.path.join(workdir, stage, "checkpoints")
        if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
            found.append(stage)
    return found


FINGERPRINT_FILE = "data_fingerprint.json"


def check_data_fingerprint(dataset: Any, workdir: str, allow_changed: bool) -> None:
    """Refuse (one line) to resume on a folder or TFDS dataset whose training records changed
    since the workdir's first run; with `allow_changed` only warn."""
    path = os.path.join(workdir, FINGERPRINT_FILE)
    if dataset.fingerprint is None or not os.path.isfile(path):
        return
    with open(path) as f:
        stored = json.load(f)["train"]
    what = changed(stored, dataset.fingerprint("train"))
    if not what:
        return
    if not allow_changed:
        raise UserError(
            f"{dataset.described}: the training data changed since the first run in workdir "
            f"{workdir} ({what}), so a resumed run would read other records at its saved "
            "position; use a new workdir, or --config.data.allow_changed_data=True to go on"
        )
    log.warning("training data changed since this workdir's first run (%s); going on", what)


def write_data_fingerprint(dataset: Any, workdir: str) -> None:
    """Keep the training records' fingerprint of the workdir's first run (process 0)."""
    path = os.path.join(workdir, FINGERPRINT_FILE)
    if dataset.fingerprint is None or os.path.exists(path) or jax.process_index() != 0:
        return
    # Whole or absent: the other processes read it (check_data_fingerprint) meanwhile.
    write_json(path, {"train": dataset.fingerprint("train")}, indent=2)
