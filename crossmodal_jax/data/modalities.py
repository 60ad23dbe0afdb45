"""The continuous modalities (image, audio, video): one entry each, holding everything the rest of
the project needs to know about one.

A new modality is one `Modality` entry: how a record becomes a model batch (`features`), how a
user's file becomes a model input (`read_file`, `input_suffixes`, `folder_suffixes`), how a model
input is shown as a picture (`to_pictures`), and whether its features are computed once per run
(`precompute`). Text is not here: it is never learned by a tokenizer (data/text.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import ml_collections
import numpy as np

from crossmodal_jax.data import features, files, padded_audio
from crossmodal_jax.data.pipeline import ImageTextFeatures, image_to_unit, unit_to_uint8

# Image and video files hold 8-bit pixels: 255 is full intensity, whatever the dataset's scale.
FILE_MAX_VALUE = 255

# (data block, raw pixel value of full intensity, caption tokenizer) -> record -> model batch
FeaturesFn = Callable[
    [ml_collections.ConfigDict, int | None, tuple[str, ...]], grain.transforms.Map
]
# (path, model input shape, data block) -> model-space array
ReadFn = Callable[[str, tuple[int, ...], ml_collections.ConfigDict], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str  # batch key of the model input: "image" | "audio" | "video"
    features: FeaturesFn
    read_file: ReadFn
    input_suffixes: tuple[str, ...]  # files the sample CLI reads from an input folder
    folder_suffixes: tuple[str, ...]  # files of a folder dataset (data/folders.py)
    to_pictures: Callable[[np.ndarray], np.ndarray]  # model inputs [N, ...] -> uint8 [N, H, W, C]
    # Features costing more than a training step can wait for (a log-mel spectrogram is ~10 ms of
    # NumPy per clip): computed once per run and kept in memory, when `in_memory(data block)` says
    # so (audio: data.audio.in_memory; False for splits whose features would not fit).
    precompute: bool = False
    in_memory: Callable[[ml_collections.ConfigDict], bool] = lambda data_cfg: True
    # (path, model input shape, data block) -> the model batch entries of one input file, when
    # they are more than `read_file`'s array (padded audio: the input and its "audio_mask").
    read_entries: Callable[..., dict[str, np.ndarray]] | None = None

    def read_input(
        self, path: str, shape: tuple[int, ...], data_cfg: ml_collections.ConfigDict
    ) -> dict[str, np.ndarray]:
        """The model batch entries of one input file (the sample CLI's view of it)."""
        if self.read_entries is not None:
            return self.read_entries(path, shape, data_cfg)
        return {self.name: self.read_file(path, shape, data_cfg)}


def _image_features(data_cfg, max_value, text):
    return ImageTextFeatures(data_cfg.text_max_len, image_max_value=max_value, text=text)


def _audio_settings(data_cfg) -> dict:
    """data.audio without the key that is not a feature setting (in_memory)."""
    return {k: v for k, v in data_cfg.audio.items() if k != "in_memory"}


def _audio_features(data_cfg, max_value, text):
    del max_value  # waveforms, not pixels
    return features.AudioTextFeatures(data_cfg.text_max_len, **_audio_settings(data_cfg), text=text)


def _video_features(data_cfg, max_value, text):
    return features.VideoTextFeatures(
        data_cfg.text_max_len, max_value=max_value, frame_size=data_cfg.frame_size, text=text
    )


def _read_image(path, shape, data_cfg):
    h, w, c = shape
    return image_to_unit(files.read_image(path, (h, w), c), FILE_MAX_VALUE)


def _read_audio(path, shape, data_cfg):
    return _read_audio_entries(path, shape, data_cfg)["audio"]


def _read_audio_entries(path, shape, data_cfg):
    """The features and, for end-padded clips, their "audio_mask" (as the training batches)."""
    waveform, rate = files.read_wav(path)
    settings = _audio_settings(data_cfg)
    x, mask = features.audio_example(waveform, rate, **settings)
    if settings["padding"] == "end":
        return {"audio": x, padded_audio.mask_key("audio"): mask}
    return {"audio": x}


def _read_video(path, shape, data_cfg):
    t, h, w, c = shape
    return image_to_unit(files.read_video(path, t, (h, w), c), FILE_MAX_VALUE)


def _image_pictures(x: np.ndarray) -> np.ndarray:
    return unit_to_uint8(x)


def _spectrogram_pictures(x: np.ndarray) -> np.ndarray:
    """Time left to right, low frequencies at the bottom: [N, frames, mels, 1] -> [N, mels, frames, 1]."""
    return np.flip(np.swapaxes(unit_to_uint8(x), 1, 2), axis=1)


def _video_pictures(x: np.ndarray) -> np.ndarray:
    """Frames side by side: [N, T, H, W, C] -> [N, H, T * W, C]."""
    x = unit_to_uint8(x)
    n, t, h, w, c = x.shape
    return np.transpose(x, (0, 2, 1, 3, 4)).reshape(n, h, t * w, c)


MODALITIES: dict[str, Modality] = {
    "image": Modality(
        "image",
        _image_features,
        _read_image,
        input_suffixes=(".png",),
        folder_suffixes=(".png", ".jpg", ".jpeg"),
        to_pictures=_image_pictures,
    ),
    "audio": Modality(
        "audio",
        _audio_features,
        _read_audio,
        input_suffixes=(".wav",),
        folder_suffixes=(".wav",),
        to_pictures=_spectrogram_pictures,
        precompute=True,
        in_memory=lambda data_cfg: data_cfg.audio.in_memory,
        read_entries=_read_audio_entries,
    ),
    "video": Modality(
        "video",
        _video_features,
        _read_video,
        input_suffixes=files.VIDEO_SUFFIXES,
        folder_suffixes=files.VIDEO_SUFFIXES,
        to_pictures=_video_pictures,
    ),
}
