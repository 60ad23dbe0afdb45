"""grain pipelines: record -> model features, the infinite training iterator, ordered eval passes.

Batches are dicts of numpy arrays with a leading batch axis (DESIGN §3 "Batch"); the training loop
turns the per-process batches into global jax arrays
(``jax.make_array_from_process_local_data``).
"""

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from crossmodal_jax.data import text as text_lib

# Prefetch on a couple of threads only: the CI machine has 2 cores and our transforms are cheap.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def image_to_unit(raw: np.ndarray, max_value: float) -> np.ndarray:
    """Raw pixels in ``[0, max_value]`` -> float32 in ``[-1, 1]`` (0 -> -1, max_value -> 1).

    The one place image scaling is defined; ``unit_to_uint8`` is its inverse for writing PNGs.
    """
    return np.asarray(raw, dtype=np.float32) * np.float32(2.0 / max_value) - np.float32(1.0)


def unit_to_uint8(x: Any) -> np.ndarray:
    """Model-space images in ``[-1, 1]`` -> uint8 ``0..255`` for PNGs (clipped).

    Full ink (raw max) maps to 255, so digits show white ink on black.
    """
    unit = (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) + 1.0) * 0.5
    return np.rint(unit * 255.0).astype(np.uint8)


class ImageTextFeatures(grain.transforms.Map):
    """Record ``{"image", "label", "caption"}`` -> ``{"image", "text", "text_mask", "label"}``.

    ``image`` float32 [H,W,C] in [-1, 1]; ``text``/``text_mask`` int32 [text_max_len] from the
    text tokenizer (bytes, or words); ``label`` int32. Module-level and holding only ints and
    strings, so grain workers unpickle it.
    """

    def __init__(
        self,
        text_max_len: int,
        image_max_value: int = 16,
        text: text_lib.TextTokenizer | None = None,
    ):
        if text_max_len < 1:
            raise ValueError(f"text_max_len must be >= 1, got {text_max_len}")
        self.text_max_len = int(text_max_len)
        self.image_max_value = int(image_max_value)
        # The caption tokenizer (None: UTF-8 bytes); a picklable object either way.
        self.tokenizer = text if text is not None else text_lib.TextTokenizer()

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        caption = element["caption"]
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        ids_L, mask_L = self.tokenizer.encode(caption, self.text_max_len)
        return {
            "image": image_to_unit(element["image"], self.image_max_value),
            "text": ids_L,
            "text_mask": mask_L,
            "label": np.asarray(element["label"], dtype=np.int32),
        }

    def __repr__(self) -> str:
        return (
            f"ImageTextFeatures(text_max_len={self.text_max_len}, "
            f"image_max_value={self.image_max_value}, tokenizer={self.tokenizer})"
        )


def local_batch_size(global_batch_size: int, num_examples: int) -> int:
    """Per-process batch size; one-line ValueError if the global size cannot be split or served."""
    process_count = jax.process_count()
    if global_batch_size < 1:
        raise ValueError(f"global batch size must be positive, got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the process count "
            f"{process_count}"
        )
    if global_batch_size > num_examples:
        raise ValueError(
            f"global batch size {global_batch_size} is larger than the dataset "
            f"({num_examples} examples)"
        )
    return global_batch_size // process_count


def make_train_iterator(
    source: Sequence[Any],
    *,
    global_batch_size: int,
    seed: int,
    transform: grain.transforms.Map | grain.transforms.RandomMap | None,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Infinite, seeded, per-process-sharded training batches: a checkpointable grain iterator.

    Order: one global stream (a fresh seeded permutation every epoch, epochs concatenated), cut
    into local batches that are dealt out to processes (process p takes local batches p, p+P,
    ...). Every process reads only its own items, and the global batch of step s is stream items
    [s*G, (s+1)*G) in the same row order whatever the process count, so per-row randomness
    (diffusion times, noise) and hence the losses are identical too. Batches may straddle an epoch
    boundary, so no example is ever dropped.

    ``get_state()``/``set_state()`` resume exactly; orbax saves it with
    ``grain.checkpoint.CheckpointSave(it)`` inside ``ocp.args.Composite``. ``transform=None``: the
    source already yields model features (see ``materialize``).
    """
    batch_size = local_batch_size(global_batch_size, len(source))
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    # repeat() reseeds upstream shuffles per epoch by default: a new permutation each epoch.
    ds = ds.repeat(None)
    if isinstance(transform, grain.transforms.RandomMap):  # per-record rng: resumes repeat it
        ds = ds.random_map(transform, seed=seed)
    elif transform is not None:
        ds = ds.map(transform)
    ds = ds.batch(batch_size, drop_remainder=True)
    # Lazy: a process maps and reads only the batches it takes.
    ds = ds[jax.process_index() :: jax.process_count()]
    return iter(with_workers(ds.to_iter_dataset(READ_OPTIONS), worker_count))


def with_workers(iter_ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    """`iter_ds` read by `worker_count` grain worker processes (0: in this process)."""
    if worker_count > 0:
        # grain workers read absl flags; outside an absl app (tests, notebooks) use the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Workers need a picklable source and transform (both module-level classes here).
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter_ds


def make_eval_batches(
    source: Sequence[Any],
    *,
    batch_size: int,
    transform: grain.transforms.Map | None,
    limit: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over the first `limit` examples (0 = the whole split); the last batch may
    be smaller (`pad_batch` fills it where a caller needs one shape)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    ds = grain.MapDataset.source(source)
    if limit:
        ds = ds[: min(limit, len(source))]
    if transform is not None:
        ds = ds.map(transform)
    ds = ds.batch(batch_size, drop_remainder=False)
    return iter(ds.to_iter_dataset(READ_OPTIONS))


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """`x` [n, ...] filled up to `size` rows by repeating its last row: every call of a jitted
    function then has one shape (one compilation), and a padded batch still divides over the
    mesh. Callers keep the first n rows of the result."""
    pad = size - len(x)
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad > 0 else x


def materialize(
    source: Sequence[Any], transform: grain.transforms.Map, *, what: str = "examples"
) -> list[dict[str, np.ndarray]]:
    """Every example of `source` through `transform`, computed once and kept in memory.

    For features too costly to recompute every epoch (log-mel spectrograms): the list is itself a
    random-access source, so shuffling, sharding and checkpointed iteration work unchanged.
    """
    start = time.perf_counter()
    out = [transform.map(source[i]) for i in range(len(source))]
    logging.getLogger("crossmodal_jax").info(
        "computed features of %d %s in %.1f s", len(out), what, time.perf_counter() - start
    )
    return out
