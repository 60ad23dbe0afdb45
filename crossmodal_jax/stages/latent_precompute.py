"""Encode a dataset's training images once with the frozen tokenizer, sharded over every device
and process, into ArrayRecord shards the generator stage then trains on (generator.latents; the
DiT recipe's "extract features", as fast-DiT does). Storage: data/latent_shards.py.

Shard k holds examples [k S, (k+1) S) and is written by process k mod P, batch by batch over that
process's own devices (no collective: hosts encode independently, at their own pace). Every
example is encoded in a batch of the same fixed size (the last padded), so its latent does not
depend on which process wrote it or how many there are; with the same devices per process, 1 and
2 processes write byte-identical shards. A rerun skips complete shards (a killed run resumes);
the manifest refuses shards of another dataset, tokenizer or setting in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from crossmodal_jax.data import latent_shards as store
from crossmodal_jax.data import pipeline
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages.objectives import TOKENIZER_LATENTS, encode_latents
from crossmodal_jax.training import sharding

log = logging.getLogger("crossmodal_jax")

DTYPES = {"float16": np.float16, "float32": np.float32}
WHERE = "generator.latents.dir"


def latent_folder(exp: Experiment, split: str = "train") -> Path:
    cfg = exp.config.generator.latents
    root = cfg.dir or os.path.join(exp.ctx.workdir, "latents")
    return Path(root).expanduser().absolute() / split


def host_tree(tree: Any) -> Any:
    """Every leaf as a whole NumPy array on this host (gathered when it spans processes)."""

    def host(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(host, tree)


def tree_digest(tree: Any) -> str:
    """sha256 of a tree's leaf paths, shapes, dtypes and bytes: which tokenizer encoded."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}{x.dtype}".encode())
        h.update(x.tobytes())
    return h.hexdigest()[:16]


def manifest(exp: Experiment, tok_host: Any, num_examples: int) -> dict[str, Any]:
    cfg = exp.config.generator.latents
    fingerprint = exp.dataset.fingerprint("train") if exp.dataset.fingerprint else None
    return {
        "format": store.FORMAT,
        "dataset": exp.dataset.described,
        "data_fingerprint": fingerprint or {"records": num_examples},
        "examples": num_examples,
        "input_shape": list(exp.input_shape),
        "tokenizer": tree_digest(tok_host),
        "flip": bool(cfg.flip),
        "dtype": cfg.dtype,
        "shard_size": int(cfg.shard_size),
    }


def check_settings(cfg) -> None:
    """One-line errors for generator.latents settings that cannot work (checked before any
    stage trains, config/validation.py, and again here)."""
    if cfg.dtype not in DTYPES:
        raise UserError(f"generator.latents.dtype={cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise UserError(
            f"generator.latents.shard_size={cfg.shard_size} and batch_size={cfg.batch_size} "
            "must be >= 1"
        )


def encoder(exp: Experiment, tok_host: Any, flip: bool) -> tuple[Any, int]:
    """(encode(batch) -> (latents, flipped latents or None) as NumPy, batch size): jitted over
    this process's devices only."""
    mesh = sharding.make_mesh({"data": -1}, devices=jax.local_devices())
    size = int(exp.config.generator.latents.batch_size)
    if size % len(jax.local_devices()):
        raise UserError(
            f"generator.latents.batch_size={size} must divide over this process's "
            f"{len(jax.local_devices())} devices"
        )
    variables = jax.device_put(tok_host, sharding.replicated(mesh))
    tokenizer = exp.tokenizer

    def encode(v, x):
        z = encode_latents(tokenizer, v, x)
        return (z, encode_latents(tokenizer, v, jnp.flip(x, axis=2))) if flip else (z, None)

    batch_in = NamedSharding(mesh, P(sharding.DATA_AXES))
    jitted = jax.jit(encode, in_shardings=(sharding.replicated(mesh), batch_in))

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with jax.set_mesh(mesh):
            z, z_flip = jitted(variables, jax.device_put(images, batch_in))
        return np.asarray(z), None if z_flip is None else np.asarray(z_flip)

    return run, size


class EncoderInputs(grain.transforms.Map):
    """Record -> what the encode needs and the shard keeps: the model image, label and raw
    caption (module-level and picklable: grain workers decode and crop in parallel)."""

    def __init__(self, features: grain.transforms.Map):
        self.features = features

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        caption = record["caption"]
        return {
            "image": self.features.map(record)["image"],
            "label": np.int32(record.get("label", -1)),
            "caption": caption if isinstance(caption, bytes) else str(caption).encode("utf-8"),
        }


def encode_shard(exp, encode, size, source, start: int, stop: int, dtype) -> list[dict]:
    """The records of examples [start, stop): images read by data.worker_count grain workers
    (decoding and cropping 256² JPEGs is the precompute's other cost), encoded `size` at a time."""
    ds = grain.MapDataset.source(source)[start:stop].map(EncoderInputs(exp.features))
    ds = ds.batch(size, drop_remainder=False)
    batches = pipeline.with_workers(
        ds.to_iter_dataset(pipeline.READ_OPTIONS), exp.config.data.worker_count
    )
    records = []
    for batch in batches:
        z, z_flip = encode(pipeline.pad_batch(batch["image"], size))
        for j in range(len(batch["image"])):
            record = {store.LATENT: z[j].astype(dtype), "label": np.int32(batch["label"][j])}
            if z_flip is not None:
                record[store.LATENT_FLIP] = z_flip[j].astype(dtype)
            record["caption"] = bytes(batch["caption"][j])
            records.append(record)
    return records


def precompute_latents(exp: Experiment, tok_vars: Any) -> dict[str, Any]:
    """Encode the training split's images into shards (what is missing of them) and return
    {"folder", "num_shards", "stats": {"count", "mean", "std"}}; every process returns the same."""
    cfg = exp.config.generator.latents
    check_settings(cfg)
    folder = latent_folder(exp)
    folder.mkdir(parents=True, exist_ok=True)  # every process: its shards may come first
    source = exp.dataset.split("train")
    n = len(source)
    tok_host = host_tree(tok_vars)
    wanted = manifest(exp, tok_host, n)
    if not store.check_manifest(folder, wanted, WHERE):
        if jax.process_index() == 0:
            store.write_manifest(folder, wanted)
    ranges = store.shard_ranges(n, cfg.shard_size)
    names = [store.shard_name(k, len(ranges)) for k in range(len(ranges))]
    mine = [k for k in range(len(ranges)) if k % jax.process_count() == jax.process_index()]
    todo = [k for k in mine if not store.shard_done(folder, names[k])]
    if todo:
        encode, size = encoder(exp, tok_host, cfg.flip)
        start, done_examples = time.perf_counter(), 0
        for i, k in enumerate(todo):
            lo, hi = ranges[k]
            records = encode_shard(exp, encode, size, source, lo, hi, DTYPES[cfg.dtype])
            store.write_shard(folder, names[k], records)
            done_examples += hi - lo
            elapsed = time.perf_counter() - start
            log.info(
                "[latents] shard %d/%d of this process (%s): %d examples, %.1f examples/s",
                i + 1,
                len(todo),
                names[k],
                done_examples,
                done_examples / max(elapsed, 1e-9),
            )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("latent shards written")
    missing = [nm for nm in names if not store.shard_done(folder, nm)]
    if missing:
        raise UserError(f"{WHERE}: shard {missing[0]} in {folder} was not written")
    stats = store.merged_stats(folder, names)
    if jax.process_index() == 0:
        store.write_stats(folder, stats)
    shard_bytes = sum(os.path.getsize(p) for p in store.shard_paths(folder, len(names)))
    log.info(
        "[latents] %d examples in %d shards in %s: %.0f bytes an example",
        n,
        len(names),
        folder,
        shard_bytes / n,
    )
    return {"folder": folder, "num_shards": len(names), "stats": stats}


def latent_statistics_of(stored: dict[str, Any], mesh) -> dict:
    """The stored statistics as the generator's frozen "latents" state (precompute.latent_statistics'
    layout: per-channel mean, one std)."""
    rep = sharding.replicated(mesh)
    stats = stored["stats"]
    return {
        "mean": jax.device_put(np.asarray(stats["mean"], np.float32), rep),
        "std": jax.device_put(np.float32(max(stats["std"], 1e-6)), rep),
    }


def stored_latents(exp: Experiment, tok_vars: Any, restored: bool) -> tuple[dict, Any]:
    """(the generator's frozen "latents" statistics, its training iterator factory) over the
    stored latents. `restored`: the stage has a checkpoint, whose model_state holds the
    statistics, so the shards are finished (or read) only when training asks for batches:
    sampling or evaluating a finished run needs neither the shards nor an encode."""
    if restored:
        placeholder = {"stats": {"mean": [0.0] * exp.tokenizer.code_dim, "std": 1.0}}

        def make_iterator():
            return latents_iterator_factory(exp, precompute_latents(exp, tok_vars))()

        return latent_statistics_of(placeholder, exp.ctx.mesh), make_iterator
    stored = precompute_latents(exp, tok_vars)
    return latent_statistics_of(stored, exp.ctx.mesh), latents_iterator_factory(exp, stored)


def latents_iterator_factory(exp: Experiment, stored: dict[str, Any]):
    """() -> the checkpointable iterator of training batches read from the shards."""
    config = exp.config
    source = store.open_shards(stored["folder"], stored["num_shards"])
    transform = store.LatentFeatures(TOKENIZER_LATENTS, config.data.text_max_len, exp.text)
    return lambda: pipeline.make_train_iterator(
        source,
        global_batch_size=config.generator.train.batch_size,
        seed=config.seed,
        transform=transform,
        worker_count=config.data.worker_count,
    )
