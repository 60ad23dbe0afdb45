"""Readers for user input files (the sample CLI's ``--input``): images, WAV audio, GIF/NPY videos.

Inputs of another size, sample rate or channel count are converted, not refused (DESIGN §4). Any
file that cannot be used (missing, truncated, not what its suffix says, wrong shape or dtype) raises
``InputFileError``: a ``UserError`` whose message is one line naming the file, which the CLIs print
without a traceback.
"""

import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence
from scipy.io import wavfile

from crossmodal_jax.errors import UserError, one_line

PathLike = str | os.PathLike


class InputFileError(UserError):
    """A user input file or folder that cannot be read; the message names it, on one line."""


def _fail(path: PathLike, what: str, err: BaseException | str | None = None) -> InputFileError:
    detail = f": {one_line(err)}" if err is not None else ""
    return InputFileError(f"{path}: {what}{detail}")


def _check_exists(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise _fail(path, "file not found")
    if not p.is_file():
        raise _fail(path, "not a file")
    return p


def _mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def _resize(img: Image.Image, hw: tuple[int, int]) -> Image.Image:
    """Resize to (H, W): area averaging when shrinking (keeps thin strokes), bilinear otherwise."""
    h, w = int(hw[0]), int(hw[1])
    if img.size == (w, h):
        return img
    shrinking = img.size[0] >= w and img.size[1] >= h
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return img.resize((w, h), resample=resample)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale: PIL's convert("L") clips instead of scaling, so scale explicitly.
        deep = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8))
    # Palette/alpha images go through RGBA -> RGB so transparency becomes black, not garbage.
    if img.mode in ("P", "PA", "LA", "RGBA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img).convert("RGB")
    return img.convert(_mode(channels))


def _as_hwc(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def read_image(path: PathLike, hw: tuple[int, int], channels: int) -> np.ndarray:
    """An image file (any format PIL reads) -> uint8 [H, W, channels], resized and converted."""
    _mode(channels)
    p = _check_exists(path)
    try:
        with Image.open(p) as img:
            img.load()  # decode now: a truncated file fails here, not later
            out = _resize(_to_mode(img, channels), hw)
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError) as e:
        raise _fail(path, "cannot read image", e) from None
    return _as_hwc(out)


def _pcm_to_float(pcm: np.ndarray, path: PathLike) -> np.ndarray:
    if pcm.dtype == np.uint8:
        return (pcm.astype(np.float32) - 128.0) / 128.0
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if pcm.dtype == np.int32:  # 32-bit PCM, and 24-bit PCM which scipy left-justifies into int32
        return (pcm.astype(np.float64) / 2147483648.0).astype(np.float32)
    if pcm.dtype == np.int64:
        return (pcm.astype(np.float64) / 9223372036854775808.0).astype(np.float32)
    if np.issubdtype(pcm.dtype, np.floating):
        return pcm.astype(np.float32)
    raise _fail(path, f"unsupported WAV sample type {pcm.dtype}")


def read_wav(path: PathLike) -> tuple[np.ndarray, int]:
    """A WAV file -> (float32 mono waveform in [-1, 1], sample rate). Channels are averaged."""
    p = _check_exists(path)
    try:
        with warnings.catch_warnings():
            # scipy warns (not raises) on a truncated data chunk; treat that as a broken file.
            warnings.simplefilter("error", wavfile.WavFileWarning)
            sr, pcm = wavfile.read(p)
    except (OSError, ValueError, EOFError, struct.error, wavfile.WavFileWarning) as e:
        raise _fail(path, "cannot read WAV audio", e) from None
    wave = _pcm_to_float(np.asarray(pcm), path)
    if wave.ndim == 2:
        wave = wave.mean(axis=1, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise _fail(path, "WAV file holds no samples")
    if sr <= 0:
        raise _fail(path, f"invalid sample rate {sr}")
    if not np.all(np.isfinite(wave)):
        raise _fail(path, "WAV file holds NaN or infinite samples")
    return wave, int(sr)


def fit_time(frames_T: np.ndarray, frames: int) -> np.ndarray:
    """Exactly ``frames`` frames: the centre ones of a longer clip; a shorter clip is padded by
    repeating its last frame (motion pauses rather than the digit vanishing)."""
    t = len(frames_T)
    if t >= frames:
        start = (t - frames) // 2
        return frames_T[start : start + frames]
    pad = np.repeat(frames_T[-1:], frames - t, axis=0)
    return np.concatenate([frames_T, pad], axis=0)


def _read_gif(p: Path, path: PathLike, hw: tuple[int, int], channels: int) -> list[np.ndarray]:
    try:
        with Image.open(p) as img:
            if img.format != "GIF":
                raise _fail(path, f"expected a GIF, found {img.format or 'unknown'} data")
            return [
                _as_hwc(_resize(_to_mode(frame.copy(), channels), hw))
                for frame in ImageSequence.Iterator(img)
            ]
    except InputFileError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as e:
        raise _fail(path, "cannot read GIF video", e) from None


def _read_npy(p: Path, path: PathLike, hw: tuple[int, int], channels: int) -> list[np.ndarray]:
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _fail(path, "holds Python objects; expected a uint8 array") from None
        raise _fail(path, "cannot read .npy video", e) from None
    except (OSError, EOFError) as e:
        raise _fail(path, "cannot read .npy video", e) from None
    if not isinstance(arr, np.ndarray):
        raise _fail(path, "expected one array, found an archive")
    if arr.dtype != np.uint8:
        raise _fail(path, f"video dtype is {arr.dtype}; expected uint8 (0..255)")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise _fail(
            path, f"video shape {arr.shape}; expected [T,H,W] or [T,H,W,C] with C 1, 3 or 4"
        )
    return convert_frames(arr, hw, channels)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre square of `size`, after scaling the short side to `size`: ADM's
    `center_crop_arr` (guided-diffusion), which the DiT paper's ImageNet data uses: box-halving
    while the short side is at least twice `size`, then bicubic."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def convert_frames(
    frames: np.ndarray, hw: tuple[int, int], channels: int, crop: bool = False
) -> list[np.ndarray]:
    """uint8 frames [..., H, W, C] (C 1, 3 or 4) -> uint8 [h, w, channels] each, converted like
    ``read_image`` (the TFDS sources convert their images and clips with it too); `crop`: the
    centre square (`center_crop`, h == w) instead of a resize that changes the aspect ratio."""
    out = []
    for frame_HxWxC in np.asarray(frames, np.uint8).reshape(-1, *np.shape(frames)[-3:]):
        data = frame_HxWxC[..., 0] if frame_HxWxC.shape[-1] == 1 else frame_HxWxC
        # fromarray infers L / RGB / RGBA from the shape of a uint8 array.
        img = _to_mode(Image.fromarray(np.ascontiguousarray(data)), channels)
        out.append(_as_hwc(center_crop(img, hw[0]) if crop else _resize(img, hw)))
    return out


def _read_mp4(p: Path, path: PathLike, hw: tuple[int, int], channels: int) -> list[np.ndarray]:
    """Every frame of the first video stream, decoded by PyAV (FFmpeg's libraries in its wheel)."""
    try:
        import av  # optional: the `video` extra
    except ImportError:
        raise _fail(path, 'reading .mp4 needs PyAV: pip install -e ".[video]"') from None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise _fail(path, "MP4 file has no video stream")
            return [
                _as_hwc(_resize(_to_mode(frame.to_image(), channels), hw))
                for frame in container.decode(video=0)
            ]
    except InputFileError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise _fail(path, "cannot read MP4 video", e) from None


# Video files the readers take: .mp4 only decodes with PyAV installed (a clear error says so).
VIDEO_SUFFIXES = (".gif", ".npy", ".mp4")
_VIDEO_READERS = {".gif": _read_gif, ".npy": _read_npy, ".mp4": _read_mp4}


def read_video(path: PathLike, frames: int, hw: tuple[int, int], channels: int) -> np.ndarray:
    """A ``.gif``, ``.npy`` (uint8 [T,H,W] / [T,H,W,C]) or ``.mp4`` video -> uint8
    [frames, H, W, channels].

    Frames are resized and converted like ``read_image``; time is centre-cropped or padded (last
    frame repeated) to ``frames``.
    """
    _mode(channels)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    p = _check_exists(path)
    reader = _VIDEO_READERS.get(p.suffix.lower())
    if reader is None:
        raise _fail(path, f"unsupported video type '{p.suffix}'; expected .gif, .npy or .mp4")
    frame_list = reader(p, path, hw, channels)
    if not frame_list:
        raise _fail(path, "video has no frames")
    return fit_time(np.stack(frame_list), frames)


def list_inputs(folder: PathLike, suffixes: Iterable[str]) -> list[Path]:
    """Files in ``folder`` (not recursive) whose suffix is one of ``suffixes`` (case-insensitive),
    sorted by file name; ``InputFileError`` if the folder is missing or holds none."""
    wanted = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes}
    root = Path(folder)
    if not root.exists():
        raise InputFileError(f"{folder}: input folder not found")
    if not root.is_dir():
        raise InputFileError(f"{folder}: not a folder")
    found = sorted(
        (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in wanted),
        key=lambda p: p.name,
    )
    if not found:
        raise InputFileError(f"{folder}: no {' or '.join(sorted(wanted))} files in the folder")
    return found
