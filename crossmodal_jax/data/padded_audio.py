"""Clips of any length up to a maximum: padded at the end, with a mask of the frames that hold sound.

``data.audio.padding`` chooses how a trimmed clip becomes ``data.audio.num_samples`` samples:

- ``"centre"`` (the default, what the embedded speech datasets were tuned with): centre-cut or
  centre-padded (``audio.fit_length``); every frame counts;
- ``"end"`` (real speech of many lengths, LibriSpeech's 1-35 s): the clip starts at sample 0 and is
  padded with silence at the end; the batch carries ``"audio_mask"`` i32[frames], 1 for frames
  that hold the clip. The tokenizer's reconstruction loss and the X→text DiT's attention ignore the
  rest (stages/source_mask.py).

A clip longer than ``num_samples`` is cut at the end, with one warning per process, rather than
refused: a TFDS split is decoded lazily inside grain workers, so a refusal would either stop a run
hours in, at the first long clip, or need every clip decoded before training starts; and the sample
CLI's contract is that inputs of another size are converted, not refused. Sized for the dataset
(LibriSpeech's longest utterance is 34.96 s; configs/librispeech_s2t.py holds 35.2 s), nothing is
cut. Folder datasets are decoded up front anyway, and there a long clip stays an error (folders.py).

The padded frames are set to ``PAD_VALUE`` exactly (the floor a silent frame has), so every padded
frame looks alike whatever window overlap the STFT gives the first of them.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from crossmodal_jax.data import audio

PADDINGS = ("centre", "end")
# The normalised log-mel value of silence (normalize_log_mel of audio.FLOOR_DB): padded frames.
PAD_VALUE = -1.0
# Batch key of a source's validity mask: "audio" -> "audio_mask" (like "text" -> "text_mask").
MASK_SUFFIX = "_mask"

log = logging.getLogger("crossmodal_jax")
_warned = False  # one warning per process about cut clips


def mask_key(source_key: str) -> str:
    """The batch key of a source's per-frame validity mask."""
    return source_key + MASK_SUFFIX


def _warn_cut_once(n: int, num_samples: int) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "a clip of %.2f s (after trimming silence) is longer than data.audio.num_samples=%d "
            "(%.2f s) and was cut at the end; its transcript may say more than the model hears "
            "(warned once per process)",
            n / audio.SAMPLE_RATE,
            num_samples,
            num_samples / audio.SAMPLE_RATE,
        )


def pad_end(x: np.ndarray, num_samples: int) -> tuple[np.ndarray, int]:
    """(exactly ``num_samples`` samples: ``x`` from sample 0, zeros after it, cut at the end if
    longer, the number of samples of ``x`` kept)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if len(x) > num_samples:
        _warn_cut_once(len(x), num_samples)
    kept = min(len(x), num_samples)
    out = np.zeros((num_samples,), dtype=np.float32)
    out[:kept] = x[:kept]
    return out, kept


def valid_frames(kept_samples: int, num_samples: int, hop: int) -> int:
    """Frames that hold the clip: those whose hop block [t * hop, (t + 1) * hop) starts inside its
    ``kept_samples`` samples; at least 1 (an empty clip still has one frame of silence to read, so
    an attention over it is never empty)."""
    frames = audio.num_frames(num_samples, hop)
    return min(frames, max(1, math.ceil(kept_samples / hop)))


def frame_mask(kept_samples: int, num_samples: int, hop: int) -> np.ndarray:
    """i32[frames]: 1 for the first ``valid_frames`` frames, 0 after them."""
    mask = np.zeros((audio.num_frames(num_samples, hop),), np.int32)
    mask[: valid_frames(kept_samples, num_samples, hop)] = 1
    return mask


def end_padded_log_mel(
    x: np.ndarray,
    num_samples: int,
    *,
    n_fft: int,
    hop: int,
    n_mels: int,
    fmin: float,
    fmax: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A trimmed, loudness-normalised 16 kHz clip -> (normalised log-mel f32[frames, n_mels, 1]
    with padded frames at PAD_VALUE, frame mask i32[frames]).

    Only the frames with sound are computed (a 12.7 s clip in 35.2 s: a third of the STFT): frame
    t's window ends before sample t * hop + n_fft, so the log-mel of the first
    (valid + ceil(n_fft / hop)) * hop samples gives them as the whole padded clip would (up to the
    last bit that a matrix product of another size may round differently).
    """
    padded, kept = pad_end(x, num_samples)
    mask = frame_mask(kept, num_samples, hop)
    valid = int(mask.sum())
    span = min(num_samples, (valid + math.ceil(n_fft / hop)) * hop)
    settings = dict(n_fft=n_fft, hop=hop, n_mels=n_mels, fmin=fmin, fmax=fmax)
    log_mel_VxM = audio.log_mel_spectrogram(padded[:span], **settings)[:valid]
    out_FxM = np.full((len(mask), n_mels), PAD_VALUE, np.float32)
    out_FxM[:valid] = audio.normalize_log_mel(log_mel_VxM)
    return out_FxM[..., None], mask
