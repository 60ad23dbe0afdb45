"""TFDS datasets a user has prepared, read through ``tfds.data_source`` as grain sources.

Selected with ``data.name = "tfds"`` and ``data.tfds_name`` (keys: ``blocks.tfds_data``), one of
``TFDS_DATASETS``; ``data.data_dir`` is the TFDS data directory ("" = ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``). Nothing is downloaded here: a dataset that is not prepared there (in
the ``array_record`` file format, the one with random access) is a one-line ``UserError`` that
says how to prepare it, raised when the source is built, before anything is written.

Records follow the embedded datasets and ``folders.py``, so the feature transforms of
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
import dataclasses
import importlib.util
import logging
import os
import re
from functools import lru_cache
from typing import Any

import numpy as np

from crossmodal_jax.data import files, folders
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.digits import NUMBER_WORDS
from crossmodal_jax.errors import UserError, one_line

NAME = "tfds"
IMAGE_MAX_VALUE = 255  # images and frames stay 8-bit
NO_LABEL = folders.NO_LABEL
DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # tfds's own default, when $TFDS_DATA_DIR is unset
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")
CIFAR10_CLASSES = (  # the order of cifar-10's batches.meta, which the tfds labels follow
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How one TFDS dataset becomes records."""

    builder: str  # the tfds name read when data.tfds_name is the bare key ("ucf101/ucf101_1_256")
    modality: str  # "image" | "audio" | "video"
    media_key: str  # the tfds feature holding the image / waveform / clip
    train_split: str  # default of data.tfds_train_split
    test_split: str  # default of data.tfds_test_split
    # Caption source: "digit" (mnist label -> "the digit <word>"), "photo" ("a photo of a <class>"),
    # "class" (the class name in words), "label_name" (the ClassLabel name as it is: imagenet's
    # WordNet ids), "first_caption" (coco), "transcript" (librispeech).
    caption: str
    needs_tensorflow: bool  # its builder or features import tensorflow
    class_names: tuple[str, ...] = ()  # () = the dataset's ClassLabel names (label datasets)

    @property
    def has_labels(self) -> bool:
        return self.caption in ("digit", "photo", "class", "label_name")

    @property
    def digit_labels(self) -> bool:
        """Labels are the digit the caption names (evaluation scores digit naming with them)."""
        return self.caption == "digit"


TFDS_DATASETS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec("mnist", "image", "image", "train", "test", "digit", False),
    "cifar10": TfdsSpec(
        "cifar10", "image", "image", "train", "test", "photo", False, CIFAR10_CLASSES
    ),
    # Karpathy splits: train 82783, val 5000, test 5000, restval 30504 images.
    "coco_captions": TfdsSpec(
        "coco_captions", "image", "image", "train", "val", "first_caption", True
    ),
    "librispeech": TfdsSpec(
        "librispeech", "audio", "speech", "train_clean100", "test_clean", "transcript", True
    ),
    # Frames already resized to 256x256 when the dataset is prepared ("ucf101/ucf101_1": original).
    "ucf101": TfdsSpec("ucf101/ucf101_1_256", "video", "video", "train", "test", "class", True),
    # ILSVRC-2012 (the tarballs are downloaded by hand: docs/real-data.md); 1,281,167 train and
    # 50,000 validation images. Its class names are WordNet ids ("n01440764"): the captions of a
    # class-label run (data.text="classes"), never read as words.
    "imagenet2012": TfdsSpec(
        "imagenet2012", "image", "image", "train", "validation", "label_name", False
    ),
}


def _base_name(tfds_name: str) -> str:
    return re.split(r"[/:]", tfds_name, maxsplit=1)[0]


def spec_of(data_cfg) -> TfdsSpec:
    """The ``TFDS_DATASETS`` entry of ``data.tfds_name`` (which may add ``/config`` or ``:version``)."""
    if "tfds_name" not in data_cfg:
        raise UserError(
            "this config has no tfds keys (data.tfds_name, ...); add "
            "blocks.tfds_data(c.data, <modality>) to its config file"
        )
    base = _base_name(data_cfg.tfds_name)
    if not base:
        raise UserError(
            f"data.name='tfds' needs data.tfds_name, one of: {', '.join(sorted(TFDS_DATASETS))}"
        )
    if base not in TFDS_DATASETS:
        raise UserError(
            f"unknown data.tfds_name {data_cfg.tfds_name!r}; available: "
            f"{', '.join(sorted(TFDS_DATASETS))}"
        )
    return TFDS_DATASETS[base]


def builder_name(data_cfg) -> str:
    """The tfds name to read: ``data.tfds_name`` if it names a config or version, else the spec's."""
    name = data_cfg.tfds_name
    return name if name != _base_name(name) else spec_of(data_cfg).builder


def data_dir_of(data_cfg) -> str:
    """The TFDS data directory: ``data.data_dir``, else ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets."""
    path = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass(frozen=True)
class Format:
    """What records must become (hashable: it keys the source cache)."""

    modality: str
    image_size: int = 8
    channels: int = 1
    frames: int = 8
    max_samples: int = 0  # audio: the features' window (only for the model's input shape)
    crop: bool = False  # images: the centre square (data.center_crop) rather than a resize

    @classmethod
    def from_config(cls, data_cfg) -> Format:
        modality = spec_of(data_cfg).modality
        if modality == "audio":
            return cls(modality, max_samples=data_cfg.audio.num_samples)
        if data_cfg.image_size < 1:
            raise UserError(f"data.image_size must be >= 1, got {data_cfg.image_size}")
        if data_cfg.channels not in (1, 3):
            raise UserError(f"data.channels must be 1 or 3, got {data_cfg.channels}")
        frames = data_cfg.frames if modality == "video" else 8
        if frames < 1:
            raise UserError(f"data.frames must be >= 1, got {frames}")
        crop = modality == "image" and bool(data_cfg.get("center_crop", False))
        return cls(modality, data_cfg.image_size, data_cfg.channels, frames, crop=crop)


def example_record(data_cfg) -> dict[str, Any]:
    """A blank record of the configured shapes: model input shapes without opening the dataset."""
    fmt = Format.from_config(data_cfg)
    return folders.example_record(
        folders.FolderFormat(
            fmt.modality, fmt.image_size, fmt.channels, fmt.frames, max_samples=fmt.max_samples
        )
    )


# --- tfds example -> record -----------------------------------------------------------------------


def class_caption(name: str) -> str:
    """A class name in lowercase words: ``ApplyEyeMakeup`` / ``apply_eye_makeup`` -> ``apply eye
    makeup``; ``YoYo`` -> ``yo yo``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(spaced.replace("_", " ").replace("-", " ").lower().split())


def _photo_caption(name: str) -> str:
    words = class_caption(name)
    return f"a photo of {'an' if words[:1] in 'aeiou' else 'a'} {words}"


def label_captions(spec: TfdsSpec, names: tuple[str, ...]) -> tuple[str, ...]:
    """The caption of each label of a label dataset, in label order."""
    if spec.caption == "digit":
        return tuple(f"the digit {w}" for w in NUMBER_WORDS)
    if spec.caption == "photo":
        return tuple(_photo_caption(n) for n in names)
    if spec.caption == "label_name":
        return names
    return tuple(class_caption(n) for n in names)


def _text(value: Any) -> str:
    """A tfds Text value (bytes, str, or a 0-d array of either) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _caption(spec: TfdsSpec, example: dict, captions: tuple[str, ...]) -> str:
    if spec.has_labels:
        return captions[int(example["label"])]
    if spec.caption == "first_caption":
        texts = example["captions"]["text"]
        return " ".join(_text(texts[0]).split()) if len(texts) else ""
    return " ".join(_text(example["text"]).lower().split())  # transcript


def to_record(spec: TfdsSpec, example: dict, fmt: Format, captions: tuple[str, ...]) -> dict:
    """One decoded tfds example -> our record of its modality."""
    caption = _caption(spec, example, captions).encode("utf-8")
    media = example[spec.media_key]
    if spec.modality == "audio":  # librispeech: int16 at 16 kHz, the rate of our audio records
        return {"audio": np.asarray(media, np.int16).reshape(-1), "caption": caption}
    label = np.int32(example["label"]) if spec.has_labels else np.int32(NO_LABEL)
    hw = (fmt.image_size, fmt.image_size)
    if spec.modality == "image":
        return {
            "image": files.convert_frames(media, hw, fmt.channels, fmt.crop)[0],
            "label": label,
            "caption": caption,
        }
    clip = files.fit_time(np.asarray(media), fmt.frames)  # cut first: resize only kept frames
    return {
        "video": np.stack(files.convert_frames(clip, hw, fmt.channels)),
        "label": label,
        "caption": caption,
    }


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
        _base_name(data_cfg.tfds_name),
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
