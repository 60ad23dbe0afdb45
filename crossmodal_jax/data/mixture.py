"""Training batches drawn from several tasks' record lists at configured weights: one grain
pipeline for a model that learns every task at once.

Each task's records are shuffled with a fresh permutation every epoch and repeated without end
(as `pipeline.make_train_iterator` does for one task), then `grain.MapDataset.mix` interleaves
the tasks deterministically in the proportions of the weights. The mixture is random-access like
a single task's stream, so the same guarantees hold: the global batch of step s is the same rows
whatever the process count (processes take whole local batches in turn), and the iterator's
state, saved in every checkpoint, resumes it exactly, the position in every task included.

Every record gets a `task` field (the task's index in the sorted task names), so a mixed batch
says which rows belong to which task; records of all tasks must hold the same keys with the same
shapes and dtypes (pad them per task first), or they could not be stacked into one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grain
import jax
import numpy as np

from crossmodal_jax.data.pipeline import READ_OPTIONS, local_batch_size


def task_ids(weights: Mapping[str, float]) -> dict[str, int]:
    """Task name -> the integer in its records' `task` field (sorted names: stable in configs)."""
    return {name: i for i, name in enumerate(sorted(weights))}


def check_mixture(sources: Mapping[str, Sequence[dict]], weights: Mapping[str, float]) -> None:
    """One-line ValueErrors for a mixture that cannot be batched or drawn from."""
    if not weights:
        raise ValueError("a mixture needs at least one task with a weight")
    missing = sorted(set(weights) - set(sources))
    if missing:
        raise ValueError(f"mixture weights name task {missing[0]!r}, which has no records")
    for name, weight in weights.items():
        if not weight > 0:
            raise ValueError(f"mixture weight of task {name!r} must be > 0, got {weight}")
        if len(sources[name]) == 0:
            raise ValueError(f"task {name!r} of the mixture has no records")
    reference_name = sorted(weights)[0]
    reference = _layout(sources[reference_name][0])
    for name in sorted(weights):
        layout = _layout(sources[name][0])
        if layout != reference:
            key = sorted(set(layout) ^ set(reference)) or [
                k for k in sorted(layout) if layout[k] != reference[k]
            ]
            raise ValueError(
                f"records of task {name!r} differ from those of {reference_name!r} in "
                f"{key[0]!r} ({layout.get(key[0])} against {reference.get(key[0])}): pad every "
                "task's records to one layout"
            )


def _layout(record: dict) -> dict[str, tuple]:
    return {k: (np.shape(v), np.asarray(v).dtype.str) for k, v in record.items()}


class _Tagged(grain.transforms.Map):
    """Adds the task's id to each of its records (a module-level class: picklable for workers)."""

    def __init__(self, task: int):
        self.task = task

    def map(self, record: dict) -> dict:
        return {**record, "task": np.int32(self.task)}


def make_mixture_iterator(
    sources: Mapping[str, Sequence[dict]],
    weights: Mapping[str, float],
    *,
    global_batch_size: int,
    seed: int,
) -> grain.DatasetIterator:
    """Infinite, seeded, per-process-sharded batches mixing `sources` (task name -> records) in
    the proportions of `weights` (task name -> weight > 0; tasks without a weight are left out).

    Task i's stream is shuffled with seed + i, so adding a task does not reorder the others'."""
    check_mixture(sources, weights)
    ids = task_ids(weights)
    names = sorted(weights)
    batch_size = local_batch_size(global_batch_size, sum(len(sources[n]) for n in names))
    streams = [
        grain.MapDataset.source(sources[name])
        .shuffle(seed=seed + ids[name])
        .repeat(None)  # reshuffled every epoch
        .map(_Tagged(ids[name]))
        for name in names
    ]
    ds = grain.MapDataset.mix(streams, weights=[float(weights[n]) for n in names])
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds[jax.process_index() :: jax.process_count()]
    return iter(ds.to_iter_dataset(READ_OPTIONS))
