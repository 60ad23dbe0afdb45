"""A fingerprint of a user dataset's training records, kept in the workdir, so that a run does not
resume on data that changed under it.

Resuming restores the data iterator's position in the record list; if files were added, removed
or replaced since the first run, that position now points elsewhere and the run silently trains
on a different stream. The fingerprint is the sorted (name, size) list of a folder split's files
(renaming, adding, deleting or rewriting a file to another size changes it; copying the folder
elsewhere does not) or, for a prepared TFDS dataset, its version and shard lengths. Embedded
datasets are built deterministically by this package and have none.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def _digest(items: Any) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def folder_fingerprint(path: str, split: str) -> dict:
    """{"records", "sha256"} of the files in path/split."""
    split_dir = os.path.join(os.path.abspath(os.path.expanduser(path)), split)
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(split_dir) if e.is_file())
    return {"records": len(entries), "sha256": _digest(entries)}


def tfds_fingerprint(name: str, data_dir: str | None, split: str) -> dict:
    """{"records", "sha256"} of a prepared TFDS split: its version and shard lengths."""
    import tensorflow_datasets as tfds

    info = tfds.builder(name, data_dir=data_dir or None).info
    split_info = info.splits[split]
    shards = [int(n) for n in split_info.shard_lengths]
    return {"records": int(split_info.num_examples), "sha256": _digest([str(info.version), shards])}


def mock_fingerprint(num_examples: int) -> dict:
    """{"records", "sha256"} of tfds's mock examples (data.tfds_mock_examples): the same every run."""
    return {"records": num_examples, "sha256": _digest(["tfds mock", num_examples])}


def changed(stored: dict, current: dict) -> str:
    """ "" when the fingerprints match, else what changed, in a few words."""
    if stored.get("sha256") == current.get("sha256"):
        return ""
    before, now = stored.get("records"), current.get("records")
    if before != now:
        return f"{before} training records then, {now} now"
    return f"the same number of records ({now}), other names or sizes"
