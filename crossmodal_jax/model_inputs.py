"""User files -> the model-space arrays a trained tokenizer expects (sample CLI, folder inputs).

Each loader reads one file through data/files.py (one-line errors naming the file), brings it to
the training shape (resizing images and frames, resampling audio, padding or cutting time) and
applies the same transform as the training pipeline.
"""

from __future__ import annotations

import numpy as np

from crossmodal_jax import data, stages
from crossmodal_jax.data import features, files
from crossmodal_jax.errors import UserError, one_line

# Image and video files hold 8-bit pixels: 255 is full intensity, whatever the dataset's scale.
FILE_MAX_VALUE = 255


def load_image(config, path: str) -> np.ndarray:
    h, w, c = stages.input_shape(config)
    return data.image_to_unit(files.read_image(path, (h, w), c), FILE_MAX_VALUE)


def load_audio(config, path: str) -> np.ndarray:
    waveform, rate = files.read_wav(path)
    return features.audio_features(waveform, rate, **config.data.audio)


def load_video(config, path: str) -> np.ndarray:
    t, h, w, c = stages.input_shape(config)
    return data.image_to_unit(files.read_video(path, t, (h, w), c), FILE_MAX_VALUE)


LOADERS = {"image": load_image, "audio": load_audio, "video": load_video}


def load(config, path: str) -> np.ndarray:
    """The model-space input of `path` for the config's source modality; UserError if unusable."""
    try:
        return LOADERS[stages.task(config).source](config, path)
    except (ValueError, OSError) as e:
        raise UserError(one_line(e)) from e
