"""grain transforms from ``moving_digits`` / ``spoken_digits`` records to model features.

Like ``pipeline.ImageTextFeatures``: module-level ``grain.transforms.Map`` classes holding only plain
numbers, so grain worker processes can unpickle them. ``audio_features`` is the single definition of
what a speech model sees; the sample CLI calls it on user WAV files, so training and inference
share one code path.
"""

from typing import Any

import grain
import numpy as np

from crossmodal_jax.data import audio, padded_audio
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.pipeline import image_to_unit
from crossmodal_jax.errors import UserError

# 3.072 s at 16 kHz: 192 frames with hop 256. The longest spoken_digits utterance (4 words at the
# slowest speed: "seven seven seven seven") is ~2.3 s after trimming, so nothing is cut.
DEFAULT_NUM_SAMPLES = 49152


def audio_features(waveform: np.ndarray, sample_rate: int, **settings) -> np.ndarray:
    """Mono float waveform at any rate -> normalised log-mel f32[num_samples // hop, n_mels, 1]
    (`audio_example`'s features, its settings: num_samples, n_fft, hop, n_mels, fmin, fmax,
    padding).

    Steps: resample to 16 kHz, trim leading/trailing silence, scale to a fixed RMS (so recording
    gain does not matter), centre in ``num_samples`` (pad or crop; ``padding="end"``: from sample
    0, padded at the end, see padded_audio.py), log-mel in dB, fixed map to [-1, 1]. The trailing
    axis of 1 lets a VQ-VAE treat it as a one-channel image.
    """
    return audio_example(waveform, sample_rate, **settings)[0]


def audio_example(
    waveform: np.ndarray,
    sample_rate: int,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    n_fft: int = 512,
    hop: int = 256,
    n_mels: int = 32,
    fmin: float = 20.0,
    fmax: float = 8000.0,
    padding: str = "centre",
) -> tuple[np.ndarray, np.ndarray]:
    """(``audio_features``, frame mask i32[frames]): the mask is 1 on the frames that hold the
    clip (``padding="end"``), all ones when centred (every frame is read)."""
    check_padding(padding)
    x = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if sample_rate != audio.SAMPLE_RATE:
        x = audio.resample(x, sample_rate, audio.SAMPLE_RATE)
    x = audio.trim_silence(x, audio.SAMPLE_RATE)
    x = audio.normalize_rms(x)
    spectrogram = dict(n_fft=n_fft, hop=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    if padding == "end":
        return padded_audio.end_padded_log_mel(x, num_samples, **spectrogram)
    x = audio.fit_length(x, num_samples)
    log_mel_FxM = audio.log_mel_spectrogram(x, sample_rate=audio.SAMPLE_RATE, **spectrogram)
    features = audio.normalize_log_mel(log_mel_FxM)[..., None]
    return features, np.ones((features.shape[0],), np.int32)


def check_padding(padding: str) -> None:
    """One line (UserError) for a data.audio.padding that is not one of padded_audio.PADDINGS."""
    if padding not in padded_audio.PADDINGS:
        raise UserError(
            f"unknown data.audio.padding {padding!r}; available: {', '.join(padded_audio.PADDINGS)}"
        )


def _caption_str(caption: Any) -> str:
    return caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)


class AudioTextFeatures(grain.transforms.Map):
    """Record ``{"audio": int16 [T] at 16 kHz, "caption", ...}`` ->
    ``{"audio": f32 [frames, n_mels, 1], "text": i32 [L], "text_mask": i32 [L]}``, and with
    ``padding="end"`` ``"audio_mask": i32 [frames]`` (1 = the frame holds the clip).

    ``frames = num_samples // hop`` (192 with the defaults); see ``audio_features``.
    """

    def __init__(
        self,
        text_max_len: int,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        n_fft: int = 512,
        hop: int = 256,
        n_mels: int = 32,
        fmin: float = 20.0,
        fmax: float = 8000.0,
        padding: str = "centre",
        text: text_lib.TextTokenizer | None = None,
    ):
        if text_max_len < 1:
            raise ValueError(f"text_max_len must be >= 1, got {text_max_len}")
        check_padding(padding)
        if num_samples < hop:
            raise ValueError(f"num_samples ({num_samples}) must be >= hop ({hop})")
        self.text_max_len = int(text_max_len)
        # The caption tokenizer (None: UTF-8 bytes); a picklable object either way.
        self.tokenizer = text if text is not None else text_lib.TextTokenizer()
        self.num_samples = int(num_samples)
        self.n_fft = int(n_fft)
        self.hop = int(hop)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax)
        self.padding = padding

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of ``"audio"`` in the output (without batch axis)."""
        return (audio.num_frames(self.num_samples, self.hop), self.n_mels, 1)

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        pcm = np.asarray(element["audio"])
        # Records hold int16 PCM; accept float waveforms too (already in [-1, 1]).
        wave = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm
        ids_L, mask_L = self.tokenizer.encode(_caption_str(element["caption"]), self.text_max_len)
        features, frames_mask = audio_example(
            wave,
            audio.SAMPLE_RATE,
            num_samples=self.num_samples,
            n_fft=self.n_fft,
            hop=self.hop,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
            padding=self.padding,
        )
        out = {"audio": features, "text": ids_L, "text_mask": mask_L}
        if self.padding == "end":  # centred clips keep the batch they always had
            out[padded_audio.mask_key("audio")] = frames_mask
        return out

    def __repr__(self) -> str:
        return (
            f"AudioTextFeatures(text_max_len={self.text_max_len}, num_samples={self.num_samples}, "
            f"n_fft={self.n_fft}, hop={self.hop}, n_mels={self.n_mels}, fmin={self.fmin}, "
            f"fmax={self.fmax}, padding={self.padding!r}, tokenizer={self.tokenizer})"
        )


def shrink_frames(video_TxHxWxC: np.ndarray, size: int) -> np.ndarray:
    """Frames mean-pooled to size x size (the BOX filter files.read_video uses when shrinking)."""
    t, h, w, c = video_TxHxWxC.shape
    if h % size or w % size:
        raise ValueError(f"frames of {h}x{w} cannot be pooled to {size}x{size}")
    fh, fw = h // size, w // size
    pooled = np.asarray(video_TxHxWxC, np.float32).reshape(t, size, fh, size, fw, c)
    return pooled.mean(axis=(2, 4))


class VideoTextFeatures(grain.transforms.Map):
    """Record ``{"video": uint8 [T,H,W,C], "label", "caption", ...}`` ->
    ``{"video": f32 [T,H,W,C] in [-1, 1], "text", "text_mask", "label"}``.

    ``frame_size`` > 0 mean-pools frames to that size first: a cheaper tokenizer input when the
    clip's content is coarse (moving_digits' 16x16 digit is an 8x8 one upscaled 2x).
    """

    def __init__(
        self,
        text_max_len: int,
        max_value: int = 255,
        frame_size: int = 0,
        text: text_lib.TextTokenizer | None = None,
    ):
        if text_max_len < 1:
            raise ValueError(f"text_max_len must be >= 1, got {text_max_len}")
        self.text_max_len = int(text_max_len)
        # The caption tokenizer (None: UTF-8 bytes); a picklable object either way.
        self.tokenizer = text if text is not None else text_lib.TextTokenizer()
        self.max_value = int(max_value)
        self.frame_size = int(frame_size)

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        ids_L, mask_L = self.tokenizer.encode(_caption_str(element["caption"]), self.text_max_len)
        video = element["video"]
        if self.frame_size:
            video = shrink_frames(video, self.frame_size)
        return {
            "video": image_to_unit(video, self.max_value),
            "text": ids_L,
            "text_mask": mask_L,
            "label": np.asarray(element["label"], dtype=np.int32),
        }

    def __repr__(self) -> str:
        return (
            f"VideoTextFeatures(text_max_len={self.text_max_len}, max_value={self.max_value}, "
            f"frame_size={self.frame_size}, tokenizer={self.tokenizer})"
        )
