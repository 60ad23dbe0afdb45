"""Training batches of several tasks at once, in fixed proportions: a model that learns every
task from one stream.

Each task keeps its own grain pipeline (its own records, shuffled and repeated, local batches dealt
to processes as `pipeline.make_train_iterator` does), sized to that task's rows of the global
batch: `task_rows` splits the batch by the configured weights, and every step draws exactly that
many rows of each task. The tasks' records keep their own layouts (an image's code ids and a
caption; a spectrogram's codes and a transcript): a step's batch is one flat dict whose keys are
`<task>/<key>`, so it is sharded like any batch, and `task_batch` gives a task its own rows back.

Stratified, not interleaved: with the tasks' rows drawn at random per step, every task's share of
a batch would change from step to step, so a model running each task on its own rows would see a
new shape (and compile again) at nearly every step, or would have to pad every row to the largest
layout. Fixed rows per task give fixed shapes under jit, the configured proportions exactly at
every step, and no padding.

The iterator's state is every task's position (grain states, JSON): saved in each checkpoint by
the loop and restored exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

SEPARATOR = "/"


def task_rows(global_batch_size: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Task -> its rows in each global batch (sorted task names), proportional to the weights;
    one-line ValueError when they are not whole numbers of rows or a weight is not > 0."""
    if not weights:
        raise ValueError("a mixture needs at least one task with a weight")
    for name, weight in weights.items():
        if not weight > 0:
            raise ValueError(f"mixture weight of task {name!r} must be > 0, got {weight}")
    total = sum(weights.values())
    rows = {}
    for name in sorted(weights):
        exact = global_batch_size * weights[name] / total
        if abs(exact - round(exact)) > 1e-6 or round(exact) < 1:
            raise ValueError(
                f"mixture weights {dict(sorted(weights.items()))} split the global batch "
                f"{global_batch_size} into {exact:g} rows of task {name!r}: choose weights "
                "that give every task a whole number of rows (e.g. the rows themselves)"
            )
        rows[name] = int(round(exact))
    return rows


def task_batch(batch: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The rows of one task in a mixed batch, under the task's own keys."""
    prefix = task + SEPARATOR
    return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}


class MixtureIterator:
    """Steps every task's iterator together: next() = one flat dict of `<task>/<key>` arrays.

    Checkpointed by grain's handler like a DataLoader iterator (state as bytes): the JSON of
    every task's own iterator state."""

    def __init__(self, iterators: Mapping[str, Iterator]):
        self.iterators = dict(sorted(iterators.items()))

    def __iter__(self) -> MixtureIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        return {
            f"{task}{SEPARATOR}{k}": v
            for task, it in self.iterators.items()
            for k, v in next(it).items()
        }

    def get_state(self) -> bytes:
        return json.dumps({task: it.get_state() for task, it in self.iterators.items()}).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state)
        if set(states) != set(self.iterators):
            raise ValueError(
                f"the saved data position holds tasks {sorted(states)}, this run has "
                f"{sorted(self.iterators)}"
            )
        for task, it in self.iterators.items():
            it.set_state(states[task])

    def start_prefetch(self) -> None:  # grain's handler calls it after set_state
        for it in self.iterators.values():
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()

    def close(self) -> None:
        for it in self.iterators.values():
            if hasattr(it, "close"):
                it.close()
