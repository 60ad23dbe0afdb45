"""Audio maths in NumPy: resampling, silence trimming, fixed lengths and normalised log-mel features.

Pure functions on float32 mono waveforms in [-1, 1]; file reading lives in ``files.py`` and the
record -> feature transforms in ``features.py``. Everything the speech models see goes through
``log_mel_spectrogram`` + ``normalize_log_mel``, so training and inference share one definition.

Framing (documented because model shapes depend on it): a waveform of ``n`` samples gives exactly
``max(1, n // hop)`` frames. The signal is zero-padded by ``(n_fft - hop) // 2`` on the left and
the rest of ``n_fft - hop`` on the right, so frame ``t`` is centred on sample ``t * hop + hop / 2``
and covers every sample once per hop. With the defaults, 3.072 s = 49152 samples -> 192 frames.
"""

import math

import numpy as np

SAMPLE_RATE = 16000
# Log-mel values are power in dB relative to a full-scale sine (0 dB); below FLOOR_DB is silence.
FLOOR_DB = -80.0
# normalize_log_mel maps [FLOOR_DB, FLOOR_DB + 2 * _HALF_RANGE_DB] linearly onto [-1, 1].
_HALF_RANGE_DB = 40.0
# Speech is scaled to this RMS level before features, so a quiet or loud recording looks alike.
TARGET_RMS_DBFS = -20.0


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) of a 1-D waveform; float32 out."""
    if sr_from <= 0 or sr_to <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    x = np.asarray(x, dtype=np.float32)
    if sr_from == sr_to:
        return x.copy()
    # Imported here: scipy.signal takes seconds to import and only resampling needs it.
    from scipy import signal as sp_signal

    g = math.gcd(int(sr_from), int(sr_to))
    return sp_signal.resample_poly(x, sr_to // g, sr_from // g).astype(np.float32)


def frame_rms_db(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """RMS level in dB of consecutive frames (the last partial frame included); f32[frames]."""
    x = np.asarray(x, dtype=np.float32)
    n = max(1, math.ceil(max(len(x) - frame, 0) / hop) + 1)
    padded = np.zeros((n - 1) * hop + frame, dtype=np.float32)
    padded[: len(x)] = x
    frames_FxN = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    power_F = np.mean(np.square(frames_FxN, dtype=np.float64), axis=-1)
    return (10.0 * np.log10(np.maximum(power_F, 1e-12))).astype(np.float32)


def trim_silence(
    x: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    top_db: float = 40.0,
    noise_margin_db: float = 6.0,
    min_drop_db: float = 15.0,
    frame_ms: float = 20.0,
    margin_ms: float = 50.0,
) -> np.ndarray:
    """Cuts leading and trailing silence (or steady noise), keeping ``margin_ms`` either side.

    Level reference = the 95th percentile of frame RMS (the loud speech frames, robust to a single
    click); noise floor = the 10th percentile. A frame counts as sound when it is within ``top_db`` of
    the reference AND ``noise_margin_db`` above the floor. The floor test is what makes this work at
    20 dB SNR, where noise frames sit only ~25 dB below speech; it is capped at ``min_drop_db`` below
    the reference so a clip that is all speech (no floor to find) is not eaten into. Quiet stretches
    inside the utterance are kept: only the ends are cut. An all-silent clip comes back unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    frame = max(1, int(round(sample_rate * frame_ms / 1000.0)))
    hop = max(1, frame // 2)
    if len(x) <= frame:
        return x.copy()
    level_F = frame_rms_db(x, frame, hop)
    ref = float(np.percentile(level_F, 95))
    floor = float(np.percentile(level_F, 10))
    if ref <= -100.0:  # digital silence
        return x.copy()
    threshold = max(ref - top_db, min(floor + noise_margin_db, ref - min_drop_db))
    loud = np.nonzero(level_F >= threshold)[0]
    margin = int(round(sample_rate * margin_ms / 1000.0))
    start = max(0, int(loud[0]) * hop - margin)
    stop = min(len(x), int(loud[-1]) * hop + frame + margin)
    return x[start:stop].copy()


def normalize_rms(x: np.ndarray, target_dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    """Scales ``x`` so its RMS is ``target_dbfs``; silence (RMS < -100 dBFS) is returned as is."""
    x = np.asarray(x, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    if rms < 1e-5:
        return x.copy()
    return (x * np.float32(10.0 ** (target_dbfs / 20.0) / rms)).astype(np.float32)


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Exactly ``num_samples`` samples: centre-crops a longer clip, zero-pads a shorter one evenly."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n >= num_samples:
        start = (n - num_samples) // 2
        return x[start : start + num_samples].copy()
    out = np.zeros((num_samples,), dtype=np.float32)
    left = (num_samples - n) // 2
    out[left : left + n] = x
    return out


def num_frames(num_samples: int, hop: int = 256) -> int:
    """Frames of ``log_mel_spectrogram`` for a clip of ``num_samples`` samples (see module doc)."""
    return max(1, num_samples // hop)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_center_frequencies(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre frequency (Hz) of each triangular mel filter; f64[n_mels]."""
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    return edges[1:-1]


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float
) -> np.ndarray:
    """HTK triangular filters (peak 1) over the rfft bins: f32[n_fft // 2 + 1, n_mels]."""
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bins_hz[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel_spectrogram(
    x: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 512,
    hop: int = 256,
    n_mels: int = 32,
    fmin: float = 20.0,
    fmax: float = 8000.0,
) -> np.ndarray:
    """Log-mel power in dB, floored at ``FLOOR_DB``: f32[max(1, len(x) // hop), n_mels].

    Hann window; the spectrum is divided by the window sum so a full-scale sine reads ~0 dB in its
    band whatever ``n_fft`` is.
    """
    if n_fft < hop:
        raise ValueError(f"n_fft ({n_fft}) must be >= hop ({hop})")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    frames = num_frames(len(x), hop)
    left = (n_fft - hop) // 2
    padded = np.zeros((frames - 1) * hop + n_fft, dtype=np.float32)
    usable = min(len(x), len(padded) - left)
    padded[left : left + usable] = x[:usable]
    frames_FxN = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:frames]
    window_N = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    spectrum_FxK = np.fft.rfft(frames_FxN * window_N, axis=-1) / window_N.sum()
    # x2: one-sided spectrum, so a sine's power (amplitude^2 / 2) lands in its band.
    power_FxK = 2.0 * np.square(np.abs(spectrum_FxK))
    mel_FxM = power_FxK @ mel_filterbank(n_mels, n_fft, sample_rate, fmin, fmax)
    db_FxM = 10.0 * np.log10(np.maximum(mel_FxM, 1e-30))
    return np.maximum(db_FxM, FLOOR_DB).astype(np.float32)


def normalize_log_mel(log_mel_db: np.ndarray) -> np.ndarray:
    """Fixed affine map of dB values to [-1, 1] (clipped): FLOOR_DB -> -1, 0 dB -> +1.

    Fixed rather than per-dataset statistics, so a VQ-VAE can treat the spectrogram like an image and
    inference needs no stored statistics.
    """
    unit = (np.asarray(log_mel_db, dtype=np.float32) - FLOOR_DB) / _HALF_RANGE_DB - 1.0
    return np.clip(unit, -1.0, 1.0).astype(np.float32)
