"""TFDS datasets a user has prepared, read through ``tfds.data_source`` as grain sources.

Selected with ``data.name = "tfds"`` and ``data.tfds_name`` (keys: ``blocks.tfds_data``), one of
``TFDS_DATASETS``; ``data.data_dir`` is the TFDS data directory ("" = ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``). Nothing is downloaded here: a dataset that is not prepared there (in
the ``array_record`` file format, the one with random access) is a one-line ``UserError`` that
says how to prepare it, raised when the source is built, before anything is written.

The table of datasets and the conversion of an example live in ``tfds_records.py``. Records follow
the embedded datasets and ``folders.py``, so the feature transforms of
``data/modalities.py`` apply unchanged: ``{"image": uint8 [S,S,C], "label", "caption"}``,
``{"audio": int16 [T] at 16 kHz, "caption"}``, ``{"video": uint8 [F,S,S,C], "label", "caption"}``;
images and frames are converted by the helpers of ``files.py`` (the sample CLI's), to
``data.image_size`` squared with ``data.channels``, clips to their centre ``data.frames``.
Captions:

- ``mnist``: ``the digit <word>`` (the embedded digits' contract caption; labels are digits);
- ``cifar10``: ``a photo of a <class>``;  ``ucf101``: its class name in words (``apply eye makeup``);
- ``coco_captions``: the first of an image's captions;  ``librispeech``: the transcript, lowercased.

tensorflow_datasets is imported inside functions: runs on the embedded datasets never load it.
Reading librispeech, ucf101 and coco_captions needs tensorflow (their builders import it), and
so does preparing any dataset (tfds encodes images with it): ``pip install -e ".[tfds]"``. A
prepared mnist or cifar10 is read without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from functools import lru_cache
from typing import Any

from crossmodal_jax.data import folders
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.tfds_records import (
    TFDS_DATASETS,
    Format,
    TfdsSpec,
    base_name,
    label_captions,
    spec_of,
    to_record,
)
from crossmodal_jax.errors import UserError, one_line

NAME = "tfds"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # tfds's own default, when $TFDS_DATA_DIR is unset
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def builder_name(data_cfg) -> str:
    """The tfds name to read: ``data.tfds_name`` if it names a config or version, else the spec's."""
    name = data_cfg.tfds_name
    return name if name != base_name(name) else spec_of(data_cfg).builder


def data_dir_of(data_cfg) -> str:
    """The TFDS data directory: ``data.data_dir``, else ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets."""
    path = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(path))


def example_record(data_cfg) -> dict[str, Any]:
    """A blank record of the configured shapes: model input shapes without opening the dataset."""
    fmt = Format.from_config(data_cfg)
    return folders.example_record(
        folders.FolderFormat(
            fmt.modality, fmt.image_size, fmt.channels, fmt.frames, max_samples=fmt.max_samples
        )
    )


class TfdsSource:
    """Random-access source over one split of a prepared TFDS dataset (grain protocol).

    Wraps the source ``tfds.data_source`` returns (which reads its array_record files on demand)
    and converts each example to a record. Picklable, so grain workers reopen the files.
    """

    def __init__(self, key: str, split: str, inner, fmt: Format, captions: tuple[str, ...]):
        self.key, self.split, self.fmt, self.captions = key, split, fmt, captions
        self._inner = inner

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return to_record(TFDS_DATASETS[self.key], self._inner[index], self.fmt, self.captions)

    def __repr__(self) -> str:
        return f"TfdsSource({self.key!r}, split={self.split!r}, len={len(self)})"


# --- opening a dataset ----------------------------------------------------------------------------


def tensorflow_installed() -> bool:
    """Whether tensorflow can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def prepare_command(name: str, data_dir: str) -> str:
    """A shell command that prepares ``name`` in ``data_dir`` in a random-access format.

    (The ``tfds build`` CLI of tensorflow-datasets 4.9.10 needs apache_beam just to start.)
    """
    return (
        "python -c \"import tensorflow_datasets as tfds; tfds.builder('"
        f"{name}', data_dir='{data_dir}', file_format='array_record').download_and_prepare()\""
    )


@contextlib.contextmanager
def _quiet_tfds():
    """tfds warns about each unprepared folder it looks in; our one-line error says it once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _explain(name: str, split: str, data_dir: str, error: Exception) -> UserError:
    """Why ``tfds.data_source`` failed, on one line: unprepared, wrong file format, or tfds's own
    first line (an unknown split, config or version)."""
    import tensorflow_datasets as tfds

    where = f"tfds dataset {name!r} in {data_dir} (data.data_dir)"
    try:
        with _quiet_tfds():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
            formats = (
                {f.value for f in builder.info.available_file_formats()} if prepared else set()
            )
    except Exception as e:  # tfds raises many types; all mean "cannot open"
        return UserError(f"{where}: {one_line(e)}")
    needs = (
        "" if tensorflow_installed() else ' (preparing needs tensorflow: pip install -e ".[tfds]")'
    )
    if not prepared:
        return UserError(
            f"{where} is not prepared; prepare it once with: {prepare_command(name, data_dir)}"
            + needs
        )
    if not formats & set(RANDOM_ACCESS_FORMATS):
        stored = ", ".join(sorted(formats)) or "an unknown format"
        return UserError(
            f"{where} is stored as {stored}, which has no random access; delete "
            f"{builder.data_dir} and prepare it with: {prepare_command(name, data_dir)}" + needs
        )
    return UserError(f"{where}, split {split!r}: {one_line(error)}")


def _check_text(spec: TfdsSpec, key: str, captions: tuple[str, ...], words, text_max_len) -> None:
    """Every class caption must fit the caption tokenizer; free text needs the byte tokenizer."""
    tokenizer = text_lib.TextTokenizer(words)
    if not spec.has_labels:
        if words:
            raise UserError(
                f"data.tfds_name={key!r} has free-form captions, which a word vocabulary would "
                'turn into unknown words: set data.text_words="" (UTF-8 bytes)'
            )
        return
    for caption in captions:
        unknown = tokenizer.unknown_words(caption)
        if unknown:
            raise UserError(
                f"tfds dataset {key!r}: caption {caption!r} has the word {unknown[0]!r}, which is "
                'not in data.text_words (list it there, or set data.text_words="" for UTF-8 bytes)'
            )
        n = tokenizer.length(caption)
        if n > text_max_len - 1:
            unit = "words" if words else "UTF-8 bytes"
            raise UserError(
                f"tfds dataset {key!r}: caption {caption!r} is {n} {unit}; "
                f"data.text_max_len={text_max_len} holds {text_max_len - 1}"
            )


def _data_source(name: str, split: str, data_dir: str, mock_examples: int):
    """``tfds.data_source`` of a prepared split, or of tfds's own mock examples (random values
    of the dataset's real features, the same on every call) when ``mock_examples`` > 0."""
    import tensorflow_datasets as tfds

    with contextlib.ExitStack() as stack:
        if mock_examples:
            policy = tfds.testing.MockPolicy.USE_CODE  # from the builder's code: no metadata
            stack.enter_context(tfds.testing.mock_data(num_examples=mock_examples, policy=policy))
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


@lru_cache(maxsize=8)
def _cached(
    key: str,
    name: str,
    split: str,
    data_dir: str,
    fmt: Format,
    words,
    text_max_len,
    mock_examples: int = 0,
):
    spec = TFDS_DATASETS[key]
    if spec.needs_tensorflow and not tensorflow_installed():
        raise UserError(
            f"tfds dataset {key!r} needs tensorflow to decode its {spec.modality}, which is not "
            'installed: pip install -e ".[tfds]"'
        )
    try:
        with _quiet_tfds():
            inner = _data_source(name, split, data_dir, mock_examples)
    except Exception as e:  # any tfds failure: explained on one line
        raise _explain(name, split, data_dir, e) from None
    names = spec.class_names
    if spec.has_labels and not names:
        names = tuple(inner.dataset_info.features["label"].names)
    captions = label_captions(spec, names) if spec.has_labels else ()
    if text_max_len is not None:  # None: the captions are class labels (data.text_classes)
        _check_text(spec, key, captions, words, text_max_len)
    if len(inner) == 0:
        raise UserError(f"tfds dataset {name!r} split {split!r} in {data_dir} is empty")
    return TfdsSource(key, split, inner, fmt, captions)


def get_source(data_cfg, split: str) -> TfdsSource:
    """The ``data.name = "tfds"`` source of a config's data block (``split``: "train" | "test")."""
    spec = spec_of(data_cfg)
    if split not in folders.SPLITS:
        raise UserError(f"unknown split {split!r}; available: {', '.join(folders.SPLITS)}")
    chosen = data_cfg.tfds_train_split if split == "train" else data_cfg.tfds_test_split
    tfds_split = chosen or (spec.train_split if split == "train" else spec.test_split)
    return _cached(
        base_name(data_cfg.tfds_name),
        builder_name(data_cfg),
        tfds_split,
        data_dir_of(data_cfg),
        Format.from_config(data_cfg),
        tuple(data_cfg.text_words.split()),
        None if data_cfg.get("text_classes") else data_cfg.text_max_len,
        data_cfg.tfds_mock_examples,
    )


def class_captions(data_cfg) -> tuple[str, ...]:
    """The caption of each class of a label dataset, in label order, from the builder's metadata
    (no prepared data needed: sampling a class-conditional run does not open the dataset)."""
    spec = spec_of(data_cfg)
    if not spec.has_labels:
        raise UserError(
            f"data.tfds_name={data_cfg.tfds_name!r} has no class labels (data.text_classes)"
        )
    names = spec.class_names
    if not names:
        import tensorflow_datasets as tfds

        with _quiet_tfds():
            builder = tfds.builder(builder_name(data_cfg), data_dir=data_dir_of(data_cfg))
            names = tuple(builder.info.features["label"].names)
    return label_captions(spec, names)


def clear_cache() -> None:
    """Forget opened sources (tests open mocked ones)."""
    _cached.cache_clear()
