"""Latents of a dataset stored once on disk: ArrayRecord shards, their statistics, and a manifest
that says what they were encoded from (generator.latents; stages/latent_precompute.py writes them).

Layout of `<dir>/<split>/`:

    manifest.json                       what was encoded: dataset fingerprint, tokenizer digest,
                                        latent shape and dtype, flips, shard size, example count
    shard-00003-of-00010.array_record   records of examples [3 S, 4 S), in order
    shard-00003-of-00010.json           that shard's sums (count, Σz, Σz² per channel): written
                                        after its records, so it marks the shard complete
    stats.json                          the merged per-channel mean and global std

A record is a msgpack dict {"latent": [h, w, c], "latent_flip" (with flips), "label", "caption"}:
the caption stays raw, so the caption tokenizer may change without encoding again. Each shard is
written by one process, to a temporary name renamed when complete, so a killed run leaves no
half shard and a rerun writes the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import serialization

from crossmodal_jax.data import text as text_lib
from crossmodal_jax.errors import UserError

FORMAT = 1  # bump when the record layout changes: older shards are then refused
# One record per group: random access reads one record, not a chunk (grain's advice).
WRITER_OPTIONS = "group_size:1,uncompressed"
LATENT = "latent"
LATENT_FLIP = "latent_flip"


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def shard_ranges(num_examples: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard's examples, in order."""
    return [(s, min(s + shard_size, num_examples)) for s in range(0, num_examples, shard_size)]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def check_manifest(folder: Path, manifest: dict[str, Any], where: str) -> bool:
    """True when `folder` holds latents of exactly `manifest` (possibly unfinished), False when
    it holds none; a one-line UserError naming the first difference otherwise."""
    path = folder / "manifest.json"
    if not path.is_file():
        return False
    stored = read_json(path)
    for key in sorted(set(stored) | set(manifest)):
        if stored.get(key) != manifest.get(key):
            raise UserError(
                f"{where}: the latents in {folder} were encoded with {key}={stored.get(key)!r}, "
                f"this run has {manifest.get(key)!r}; delete {folder} or point {where} elsewhere"
            )
    return True


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "manifest.json", manifest)


def shard_done(folder: Path, name: str) -> bool:
    return (folder / f"{name}.json").is_file() and (folder / f"{name}.array_record").is_file()


def channel_sums(latents: np.ndarray) -> dict[str, Any]:
    """Σz and Σz² per channel (float64) and the count of values per channel of latents [N, ..., c]."""
    z = np.asarray(latents, np.float64).reshape(-1, latents.shape[-1])
    return {"count": int(len(z)), "sum": z.sum(0).tolist(), "sumsq": np.square(z).sum(0).tolist()}


def write_shard(folder: Path, name: str, records: Sequence[dict[str, Any]]) -> None:
    """The shard's records, then its sums (the mark of a complete shard), each renamed into place."""
    final = folder / f"{name}.array_record"
    tmp = folder / f".{name}.array_record.tmp-{os.getpid()}"
    writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    for record in records:
        writer.write(serialization.msgpack_serialize(record))
    writer.close()
    os.replace(tmp, final)
    latents = [r[k] for r in records for k in (LATENT, LATENT_FLIP) if k in r]
    _write_json(folder / f"{name}.json", channel_sums(np.stack(latents)))


def merged_stats(folder: Path, names: Sequence[str]) -> dict[str, Any]:
    """Per-channel mean and one global std of every latent of the shards (flips included): the
    normalisation of Gaussian diffusion (stages/precompute.latent_statistics' definition)."""
    parts = [read_json(folder / f"{n}.json") for n in names]
    count = sum(p["count"] for p in parts)
    total = np.sum([p["sum"] for p in parts], axis=0)
    total_sq = np.sum([p["sumsq"] for p in parts], axis=0)
    mean = total / count
    # E[(z - mean_c)^2] over channels and positions; float64 sums, so no visible cancellation.
    var = float(np.mean(total_sq / count - np.square(mean)))
    return {"count": count, "mean": mean.tolist(), "std": float(np.sqrt(max(var, 0.0)))}


def write_stats(folder: Path, stats: dict[str, Any]) -> None:
    _write_json(folder / "stats.json", stats)


def shard_paths(folder: Path, num_shards: int) -> list[str]:
    return [str(folder / f"{shard_name(i, num_shards)}.array_record") for i in range(num_shards)]


class LatentFeatures(grain.transforms.RandomMap):
    """Stored record -> {"image_latents", "text", "text_mask", "label"}: the latent or, with
    probability 1/2 when the shards hold flips, its horizontal flip's (the DiT recipe's flip
    augmentation, decided per example by grain's seeded per-record rng, so resumes repeat it)."""

    def __init__(self, key: str, text_max_len: int, text: Any = None):
        self.key, self.text_max_len = key, int(text_max_len)
        self.tokenizer = text if text is not None else text_lib.TextTokenizer()

    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        record = serialization.msgpack_restore(element)
        flip = LATENT_FLIP in record and rng.random() < 0.5
        caption = record["caption"]
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        ids_L, mask_L = self.tokenizer.encode(caption, self.text_max_len)
        return {
            self.key: np.asarray(record[LATENT_FLIP if flip else LATENT], np.float32),
            "text": ids_L,
            "text_mask": mask_L,
            "label": np.asarray(record["label"], np.int32),
        }


def open_shards(folder: Path, num_shards: int) -> grain.sources.ArrayRecordDataSource:
    """The stored records of a split as one random-access source, in example order."""
    missing = [p for p in shard_paths(folder, num_shards) if not Path(p).is_file()]
    if missing:
        raise UserError(f"latents incomplete: {missing[0]} is missing")
    return grain.sources.ArrayRecordDataSource(shard_paths(folder, num_shards))
