"""The embedded ``spoken_digits`` dataset (DESIGN §4 contract): digit words spoken by espeak-ng.

Each utterance is 1-4 digit words (``three seven one``) synthesized by
``espeak-ng -v en+<variant> -s <speed> -p <pitch> -w out.wav "<text>"`` with speed 130-190 and pitch
30-70, resampled from espeak's 22050 Hz to 16 kHz mono, plus white noise at 20-40 dB SNR. The SNR
is relative to the power of the speech span (first to last sample above 1% of the peak), not of
the whole clip, because espeak appends up to 0.5 s of exact silence that would otherwise make
short utterances noisier than their nominal SNR.

Voices: train m1 m2 m3 m4 f1 f2; test m5 m7 f3 f4 (speakers never heard in training).
Every random choice comes from an RNG seeded by (fixed seed, split, index), and espeak-ng output is
deterministic for fixed arguments, so each record is a fixed function of its index (given one
espeak-ng version; the cache is keyed by VERSION, not by espeak's).
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile
from multiprocessing.pool import ThreadPool

import numpy as np

from crossmodal_jax.data import audio, digits
from crossmodal_jax.errors import UserError

NAME = "spoken_digits"
# Bump when the records change: the cache directory is keyed by it.
VERSION = "1.0.0"
SPLITS = ("train", "test")
VARIANTS = {"train": ("m1", "m2", "m3", "m4", "f1", "f2"), "test": ("m5", "m7", "f3", "f4")}
# Sized so the whole build takes well under a minute on 2 cores.
SPLIT_SIZES = {"train": 4000, "test": 600}
SAMPLE_RATE = audio.SAMPLE_RATE
MAX_WORDS = 4
SPEED_RANGE = (130, 190)  # words per minute, inclusive
PITCH_RANGE = (30, 70)  # espeak 0..99, inclusive
SNR_DB_RANGE = (20.0, 40.0)
# Fixed seed of the per-utterance RNG: part of the dataset definition, like VERSION.
_SEED = 20240603
_SPLIT_IDS = {"train": 0, "test": 1}
_INSTALL_HINT = (
    "espeak-ng is needed to build the spoken datasets (spoken_digits, spoken_shapes) but was not "
    "found on PATH; install it "
    "with `apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS), or "
    "`make install-system-deps`"
)


class EspeakMissingError(UserError, RuntimeError):
    """espeak-ng is not installed: a RuntimeError, and a UserError so the CLIs print one line."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """Every choice behind one record; a pure function of (split, index)."""

    text: str
    variant: str
    speed: int
    pitch: int
    snr_db: float
    noise_seed: tuple[int, ...]


def utterance(split: str, index: int) -> Utterance:
    """The draws of record ``index`` of ``split`` (text, voice, speed, pitch, SNR, noise seed)."""
    if split not in VARIANTS:
        raise ValueError(f"unknown split '{split}' for dataset '{NAME}'; available: train, test")
    rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
    num_words = int(rng.integers(1, MAX_WORDS + 1))
    words = [digits.NUMBER_WORDS[int(d)] for d in rng.integers(0, 10, size=num_words)]
    variants = VARIANTS[split]
    return Utterance(
        text=" ".join(words),
        variant=variants[int(rng.integers(len(variants)))],
        speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        snr_db=float(rng.uniform(*SNR_DB_RANGE)),
        # A separate stream for the noise, so the other draws never depend on the clip length.
        noise_seed=(_SEED, _SPLIT_IDS[split], index, 1),
    )


def espeak_binary() -> str:
    """Path of espeak-ng; ``EspeakMissingError`` (one line saying how to install it) if absent."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakMissingError(_INSTALL_HINT)
    return path


def synthesize(u: Utterance, workdir: str, binary: str | None = None) -> np.ndarray:
    """Clean speech of ``u``: float32 mono at 16 kHz in [-1, 1]. Writes a temp WAV in ``workdir``."""
    binary = binary or espeak_binary()
    fd, wav_path = tempfile.mkstemp(suffix=".wav", dir=workdir)
    os.close(fd)
    try:
        args = [binary, "-v", f"en+{u.variant}", "-s", str(u.speed), "-p", str(u.pitch)]
        proc = subprocess.run(
            [*args, "-w", wav_path, u.text], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(
                f"espeak-ng failed (exit {proc.returncode}) on {u.text!r} with voice "
                f"en+{u.variant}: {detail[0] if detail else 'no message'}"
            )
        from scipy.io import wavfile  # here: keeps scipy off the import path of the package

        sr, pcm = wavfile.read(wav_path)
    finally:
        os.remove(wav_path)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise RuntimeError(f"unexpected espeak-ng output: {pcm.dtype} {pcm.shape}")
    return audio.resample(pcm.astype(np.float32) / 32768.0, int(sr), SAMPLE_RATE)


def speech_power(clean: np.ndarray) -> float:
    """Mean power of the speech span: first to last sample above 1% of the peak (see module doc)."""
    clean = np.asarray(clean, dtype=np.float64)
    peak = float(np.max(np.abs(clean))) if len(clean) else 0.0
    if peak == 0.0:
        return 0.0
    active = np.nonzero(np.abs(clean) >= 0.01 * peak)[0]
    return float(np.mean(np.square(clean[active[0] : active[-1] + 1])))


def add_noise(clean: np.ndarray, snr_db: float, seed: tuple[int, ...]) -> np.ndarray:
    """``clean`` + white Gaussian noise at ``snr_db`` relative to ``speech_power``; float32."""
    rng = np.random.default_rng(list(seed))
    noise_std = np.sqrt(speech_power(clean) / 10.0 ** (snr_db / 10.0))
    noise = rng.standard_normal(len(clean)) * noise_std
    return (np.asarray(clean, dtype=np.float64) + noise).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM (clipped, rounded)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(
        np.int16
    )


def make_record(u: Utterance, clean: np.ndarray) -> dict:
    """Record ``{"audio": int16 [T] at 16 kHz, "caption": bytes, "variant": bytes,
    "num_words": int32}`` from the clean speech of ``u``."""
    return {
        "audio": to_int16(add_noise(clean, u.snr_db, u.noise_seed)),
        "caption": u.text.encode("utf-8"),
        "variant": u.variant.encode("utf-8"),
        "num_words": np.int32(len(u.text.split(" "))),
    }


def default_workers() -> int:
    # espeak-ng is a subprocess, so threads overlap fine; 2-4 keeps a small machine usable.
    return min(4, max(2, os.cpu_count() or 2))


def generate_split(split: str, count: int | None = None, workers: int | None = None) -> list[dict]:
    """Records ``0 .. count-1`` of ``split`` in index order (``count`` defaults to the full split).

    A smaller ``count`` gives exactly the first records of the full split (tests use that).
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split '{split}' for dataset '{NAME}'; available: train, test")
    count = SPLIT_SIZES[split] if count is None else int(count)
    binary = espeak_binary()
    utterances = [utterance(split, i) for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="spoken_digits-") as workdir:

        def build(u: Utterance) -> dict:
            return make_record(u, synthesize(u, workdir, binary))

        with ThreadPool(workers or default_workers()) as pool:
            # imap keeps index order whatever the completion order.
            return list(pool.imap(build, utterances, chunksize=8))


# `spoken_digits_smoke`: the first records of each split, for smoke configs and tests (seconds to
# build instead of a minute).
SMOKE_NAME = "spoken_digits_smoke"
SMOKE_SPLIT_SIZES = {"train": 64, "test": 32}


def generate_smoke_split(split: str) -> list[dict]:
    return generate_split(split, count=SMOKE_SPLIT_SIZES.get(split))
