"""The TFDS datasets this project reads (`TFDS_DATASETS`) and how one decoded tfds example becomes
our record of its modality (`to_record`): the same fields, dtypes and shapes as the embedded
datasets and `folders.py`, images and frames converted by the helpers of `files.py`. Opening a
prepared dataset, its errors and its cache are `tfds_sources.py`'s.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from crossmodal_jax.data import files, folders
from crossmodal_jax.data.digits import NUMBER_WORDS
from crossmodal_jax.errors import UserError

IMAGE_MAX_VALUE = 255  # images and frames stay 8-bit
NO_LABEL = folders.NO_LABEL
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


def base_name(tfds_name: str) -> str:
    return re.split(r"[/:]", tfds_name, maxsplit=1)[0]


def spec_of(data_cfg) -> TfdsSpec:
    """The ``TFDS_DATASETS`` entry of ``data.tfds_name`` (which may add ``/config`` or ``:version``)."""
    if "tfds_name" not in data_cfg:
        raise UserError(
            "this config has no tfds keys (data.tfds_name, ...); add "
            "blocks.tfds_data(c.data, <modality>) to its config file"
        )
    base = base_name(data_cfg.tfds_name)
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
