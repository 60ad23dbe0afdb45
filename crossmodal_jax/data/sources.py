"""Dataset registry and ArrayRecord cache: random-access sources that grain can read.

Each embedded dataset is generated once, deterministically, and written as one ArrayRecord file per
split under ``<data_dir>/<name>/<version>/``. The version directory is built in a temporary
sibling and renamed into place, so a crashed or concurrent build never leaves a half-written cache
that a later run would trust: if the directory exists, it is complete.

Records are msgpack maps; numpy values travel as ``{dtype, shape, data}`` so dtypes survive exactly.
We write ArrayRecord directly rather than through a tfds builder: same file format, no tfds
DatasetInfo/metadata machinery, and nothing that could pull in tensorflow.
"""

import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from crossmodal_jax.data import (
    digits,
    moving_digits,
    moving_shapes,
    shapes,
    spoken_digits,
    spoken_shapes,
)

DATA_DIR_ENV = "CROSSMODAL_DATA_DIR"
_ND_KEY = "__nd__"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to build one embedded dataset."""

    name: str
    version: str  # part of the cache path: bump it when records change
    splits: tuple[str, ...]
    generate: Callable[[str], list[dict]]  # split -> records in order
    modality: str  # the non-text field: "image" | "audio" | "video" (picks the feature transform)
    # Raw pixel value meaning "full ink/intensity"; pipelines scale by it. None: no images/videos.
    image_max_value: int | None = None
    # The record's label is the digit its caption names (scored as digit naming); the shapes
    # world's records carry what their captions state instead (evaluation/shapes_judge.py).
    digit_labels: bool = True


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name=digits.NAME,
        version=digits.VERSION,
        splits=digits.SPLITS,
        generate=digits.generate_split,
        modality="image",
        image_max_value=digits.IMAGE_MAX_VALUE,
    ),
    "moving_digits": DatasetSpec(
        name=moving_digits.NAME,
        version=moving_digits.VERSION,
        splits=moving_digits.SPLITS,
        generate=moving_digits.generate_split,
        modality="video",
        image_max_value=moving_digits.IMAGE_MAX_VALUE,
    ),
    "shapes": DatasetSpec(
        name=shapes.NAME,
        version=shapes.VERSION,
        splits=shapes.SPLITS,
        generate=shapes.generate_split,
        digit_labels=False,
        modality="image",
        image_max_value=shapes.IMAGE_MAX_VALUE,
    ),
    "moving_shapes": DatasetSpec(
        name=moving_shapes.NAME,
        version=moving_shapes.VERSION,
        splits=moving_shapes.SPLITS,
        generate=moving_shapes.generate_split,
        digit_labels=False,
        modality="video",
        image_max_value=moving_shapes.IMAGE_MAX_VALUE,
    ),
    "moving_shapes_smoke": DatasetSpec(
        name=moving_shapes.SMOKE_NAME,
        version=moving_shapes.VERSION,
        splits=moving_shapes.SPLITS,
        generate=moving_shapes.generate_smoke_split,
        digit_labels=False,
        modality="video",
        image_max_value=moving_shapes.IMAGE_MAX_VALUE,
    ),
    "spoken_digits": DatasetSpec(
        name=spoken_digits.NAME,
        version=spoken_digits.VERSION,
        splits=spoken_digits.SPLITS,
        generate=spoken_digits.generate_split,
        modality="audio",
    ),
    "spoken_shapes": DatasetSpec(
        name=spoken_shapes.NAME,
        version=spoken_shapes.VERSION,
        splits=spoken_shapes.SPLITS,
        generate=spoken_shapes.generate_split,
        digit_labels=False,
        modality="audio",
    ),
    "spoken_shapes_smoke": DatasetSpec(
        name=spoken_shapes.SMOKE_NAME,
        version=spoken_shapes.VERSION,
        splits=spoken_shapes.SPLITS,
        generate=spoken_shapes.generate_smoke_split,
        digit_labels=False,
        modality="audio",
    ),
    "spoken_digits_smoke": DatasetSpec(
        name=spoken_digits.SMOKE_NAME,
        version=spoken_digits.VERSION,
        splits=spoken_digits.SPLITS,
        generate=spoken_digits.generate_smoke_split,
        modality="audio",
    ),
}


def default_data_dir() -> Path:
    """``$CROSSMODAL_DATA_DIR``, else ``~/.cache/crossmodal_jax/datasets``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/crossmodal_jax/datasets").expanduser()


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; one-line ValueError if unknown."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(
            f"unknown split '{split}' for dataset '{spec.name}'; "
            f"available: {', '.join(spec.splits)}"
        )


# --- record codec ---------------------------------------------------------------------------------


def _pack_value(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        return {
            _ND_KEY: True,
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "data": arr.tobytes(),
        }
    if isinstance(value, bytes | str | int | float):
        return value
    raise TypeError(f"cannot serialize record value of type {type(value).__name__}")


def _unpack_value(value: Any) -> Any:
    if isinstance(value, dict) and value.get(_ND_KEY):
        arr = np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        # Copy: frombuffer arrays are read-only views, which surprises in-place transforms.
        return arr[()] if arr.ndim == 0 else arr.copy()
    return value


def encode_record(record: dict[str, Any]) -> bytes:
    """Serializes a record dict (numpy arrays/scalars, bytes, str, int, float) to bytes."""
    return msgpack.packb({k: _pack_value(v) for k, v in record.items()}, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of ``encode_record``: numpy values come back with their dtype and shape."""
    packed = msgpack.unpackb(data, raw=False)
    return {k: _unpack_value(v) for k, v in packed.items()}


# --- cache ----------------------------------------------------------------------------------------


def _split_file(version_dir: Path, split: str) -> Path:
    return version_dir / f"{split}.array_record"


def _write_split(path: Path, records: Sequence[dict]) -> None:
    # group_size:1 makes every record its own chunk: cheapest random access, which shuffling needs.
    writer = ArrayRecordWriter(str(path), "group_size:1")
    try:
        for record in records:
            writer.write(encode_record(record))
    finally:
        writer.close()


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Builds the cache of dataset ``name`` unless present; returns its version directory.

    Safe against concurrent builders (several processes of one job): each writes its own temporary
    directory, the first rename wins, the others discard theirs.
    """
    spec = get_spec(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    version_dir = root / spec.name / spec.version
    if version_dir.is_dir():
        return version_dir
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = version_dir.parent / f".tmp-{spec.version}-{os.getpid()}-{uuid.uuid4().hex}"
    tmp_dir.mkdir()
    try:
        for split in spec.splits:
            _write_split(_split_file(tmp_dir, split), spec.generate(split))
        try:
            os.rename(tmp_dir, version_dir)
        except OSError:
            # Lost the race to another builder: its directory is complete, so use it.
            if not version_dir.is_dir():
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return version_dir


class RecordSource:
    """Random-access source over one cached split (grain ``RandomAccessDataSource`` protocol).

    ``source[i]`` is a record dict. Picklable by path, so grain worker processes reopen the file
    instead of inheriting a reader.
    """

    def __init__(self, path: str | os.PathLike):
        self._path = str(path)
        self._reader = grain.sources.ArrayRecordDataSource([self._path])

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self._reader[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        # Batched read: grain calls this when present, one reader call per batch.
        return [decode_record(r) for r in self._reader.__getitems__(list(indices))]

    def __getstate__(self) -> dict[str, str]:
        return {"path": self._path}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"RecordSource({self._path!r}, len={len(self)})"


def get_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> RecordSource:
    """A grain-compatible random-access source of ``name``/``split``; builds the cache if needed."""
    spec = get_spec(name)
    _check_split(spec, split)
    return RecordSource(_split_file(prepare(name, data_dir), split))


def load_arrays(
    name: str, split: str, data_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """Every record of a split stacked, in order, for evaluation code.

    ``bytes`` fields (captions) become object arrays of ``str``; numpy fields are stacked.
    """
    source = get_source(name, split, data_dir)
    records = source.__getitems__(range(len(source)))
    if not records:
        raise ValueError(f"dataset '{name}' split '{split}' is empty")
    out: dict[str, np.ndarray] = {}
    for key in records[0]:
        values = [r[key] for r in records]
        if isinstance(values[0], bytes):
            arr = np.empty((len(values),), dtype=object)
            arr[:] = [v.decode("utf-8") for v in values]
            out[key] = arr
        elif len({np.shape(v) for v in values}) == 1:
            out[key] = np.stack([np.asarray(v) for v in values])
        else:  # variable-length fields (waveforms) stay one array per record
            arr = np.empty((len(values),), dtype=object)
            arr[:] = [np.asarray(v) for v in values]
            out[key] = arr
    return out
