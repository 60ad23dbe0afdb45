"""One protocol for every data source a config can name: an embedded dataset (data/sources.py), a
user's folder (``data.name = "folder"``, data/folders.py) or a prepared TFDS dataset
(``data.name = "tfds"``, data/tfds_sources.py).

`open_dataset(config.data)` is the one place that asks which kind a config names; everything
outside data/ talks to the `Dataset` it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import ml_collections

from crossmodal_jax.data import fingerprint, folders, shapes, sources, tfds_records, tfds_sources
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError


@dataclasses.dataclass
class Dataset:
    """A configured dataset: its splits as grain random-access sources, and what they hold."""

    data_cfg: ml_collections.ConfigDict
    modality: str  # the non-text field: "image" | "audio" | "video"
    image_max_value: int | None  # raw pixel value of full intensity (None: no pixels)
    has_labels: bool  # records carry a class label (batches then have "label")
    digit_labels: bool  # the label is the digit the caption names (digit-naming accuracy)
    described: str  # how the config names it, for messages: "data.name='digits'"
    splits: tuple[str, ...]  # e.g. ("train", "test"), or with the shapes world's "novel"
    open_split: Callable[[str], Any]  # split name -> random-access source
    # One record of the training shapes without reading the data (folders, TFDS: from the config,
    # so sampling needs neither the training folder nor the prepared dataset); None: train[0].
    blank_record: Callable[[], dict] | None = None
    # split name -> {"records", "sha256"} of its record list (data/fingerprint.py); None for the
    # embedded datasets, which this package builds the same way every time.
    fingerprint: Callable[[str], dict] | None = None
    # The caption of each class, in label order, for a label dataset whose captions are its
    # classes (data.text_classes: the generator is class-conditional); None: captions are text.
    class_captions: Callable[[], tuple[str, ...]] | None = None
    _splits: dict = dataclasses.field(default_factory=dict, repr=False)

    def split(self, split: str):
        """The split as a random-access source, opened (or built) on first use."""
        if split not in self._splits:
            self._splits[split] = self.open_split(split)
        return self._splits[split]

    def example_record(self) -> dict[str, Any]:
        return self.blank_record() if self.blank_record else self.split("train")[0]

    def features(self, text: Any = None) -> grain.transforms.Map:
        """The record -> model batch transform with caption tokenizer `text` (data.text's
        TextTokenizer or one with its interface; None: UTF-8 bytes); batches have "label" only
        where records do."""
        transform = MODALITIES[self.modality].features(self.data_cfg, self.image_max_value, text)
        if self.data_cfg.canonical_captions:
            transform = shapes.CanonicalCaptions(transform)
        return transform if self.has_labels else folders.WithoutLabel(transform)


def _embedded(data_cfg: ml_collections.ConfigDict) -> Dataset:
    spec = sources.get_spec(data_cfg.name)
    return Dataset(
        data_cfg,
        modality=spec.modality,
        image_max_value=spec.image_max_value,
        has_labels=True,
        digit_labels=spec.digit_labels,
        described=f"data.name={data_cfg.name!r}",
        splits=spec.splits,
        open_split=lambda split: sources.get_source(
            data_cfg.name, split, data_cfg.data_dir or None
        ),
    )


def _folder(data_cfg: ml_collections.ConfigDict) -> Dataset:
    fmt = folders.FolderFormat.from_config(data_cfg)
    _check_frame_size(data_cfg, fmt.modality)
    return Dataset(
        data_cfg,
        modality=fmt.modality,
        image_max_value=folders.IMAGE_MAX_VALUE,
        has_labels=False,
        digit_labels=False,
        described=f"data.name={data_cfg.name!r}",
        splits=folders.SPLITS,
        # Validated file by file on first use, then cached by the folder module.
        open_split=lambda split: folders.get_source(data_cfg, split),
        blank_record=lambda: folders.example_record(fmt),
        fingerprint=lambda split: fingerprint.folder_fingerprint(data_cfg.path, split),
    )


def _tfds(data_cfg: ml_collections.ConfigDict) -> Dataset:
    spec = tfds_records.spec_of(data_cfg)
    _check_frame_size(data_cfg, spec.modality)
    return Dataset(
        data_cfg,
        modality=spec.modality,
        image_max_value=tfds_records.IMAGE_MAX_VALUE,
        has_labels=spec.has_labels,
        digit_labels=spec.digit_labels,
        described=f"data.tfds_name={data_cfg.tfds_name!r}",
        splits=("train", "test"),
        # Opened (is it prepared?) once per process, then cached by the tfds module.
        open_split=lambda split: tfds_sources.get_source(data_cfg, split),
        blank_record=lambda: tfds_sources.example_record(data_cfg),
        class_captions=(lambda: tfds_sources.class_captions(data_cfg)) if spec.has_labels else None,
        fingerprint=lambda split: (
            fingerprint.mock_fingerprint(data_cfg.tfds_mock_examples)
            if data_cfg.tfds_mock_examples
            else fingerprint.tfds_fingerprint(
                tfds_sources.builder_name(data_cfg), tfds_sources.data_dir_of(data_cfg), split
            )
        ),
    )


def _check_frame_size(data_cfg, modality: str) -> None:
    """User videos are converted to data.image_size frames, then pooled to data.frame_size."""
    if modality == "video" and data_cfg.frame_size and data_cfg.image_size % data_cfg.frame_size:
        raise UserError(
            f"data.image_size={data_cfg.image_size} is not a multiple of "
            f"data.frame_size={data_cfg.frame_size}"
        )


# data.name -> the kind of dataset; any other name is an embedded dataset's.
KINDS = {folders.NAME: _folder, tfds_sources.NAME: _tfds}


def open_dataset(data_cfg: ml_collections.ConfigDict) -> Dataset:
    """The dataset a config's data block names; UserError (one line) if there is none such."""
    kind = KINDS.get(data_cfg.name)
    if kind is None and data_cfg.name not in sources.DATASETS:
        available = ", ".join(sorted([*sources.DATASETS, *KINDS]))
        raise UserError(f"unknown dataset '{data_cfg.name}'; available: {available}")
    return (kind or _embedded)(data_cfg)
