"""Uploaded files of the web demo: checked for size and length before anything decodes them.

The readers of `crossmodal_jax.data.files` decode a whole file (every frame of a video, every
sample of a WAV) before fitting it to the model's input. For the sample CLI the user chose the
files; a server takes them from anyone on the page, so a file whose header promises minutes of
audio, thousands of frames or a gigapixel image is refused from its header, in one line, before
it can hold a server thread and the CPU for minutes. Anything the header checks cannot see (a corrupt
body) is left to the readers, which already refuse it in one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from crossmodal_jax.errors import UserError

MAX_UPLOAD_BYTES = 20 * 2**20  # a 20 MB body; larger ones are refused from Content-Length
MAX_AUDIO_SECONDS = 60.0  # the models hear a few seconds; a minute is already generous
MAX_PIXELS = 4096 * 4096  # per image or video frame
MAX_FRAMES = 600  # video frames (the models see 8; the readers decode all before fitting)
MAX_NAME_CHARS = 100


def clean_name(name: str) -> str:
    """The upload's file name as shown in messages: its last path part, printable, bounded."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())
    if len(base) > MAX_NAME_CHARS:  # keep the suffix: it decides the reader
        stem, suffix = os.path.splitext(base)
        base = stem[: MAX_NAME_CHARS - len(suffix) - 3] + "..." + suffix
    return base


def wav_seconds(data: bytes) -> float | None:
    """The seconds of audio a RIFF/WAVE file's header declares (the data chunk's bytes over the
    fmt chunk's byte rate, capped at the bytes present); None when the header cannot say."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and size >= 16:
            # format(2) channels(2) sample_rate(4) byte_rate(4) block_align(2) bits(2)
            byte_rate = int.from_bytes(data[pos + 16 : pos + 20], "little")
        elif chunk == b"data":
            # Streamed WAVs write 0 or 0xFFFFFFFF here: the bytes present are what will be read.
            present = len(data) - pos - 8
            size = present if size in (0, 0xFFFFFFFF) else min(size, present)
            return size / byte_rate if byte_rate > 0 else None
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _check_image_header(name: str, data: bytes) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            w, h = img.size
            frames = getattr(img, "n_frames", 1) if img.format == "GIF" else 1
    except Exception:  # noqa: BLE001 - a corrupt file: the reader says what is wrong
        return
    if w * h > MAX_PIXELS:
        raise UserError(f"{name}: {w}×{h} pixels; the demo takes at most {MAX_PIXELS:,} a frame")
    if frames > MAX_FRAMES:
        raise UserError(f"{name}: {frames} frames; the demo takes at most {MAX_FRAMES}")


def _check_npy_header(name: str, data: bytes) -> None:
    try:
        f = io.BytesIO(data)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[np.lib.format.read_magic(f)]
        shape = read_header(f)[0]  # the header, not the array
    except Exception:  # noqa: BLE001 - the reader says what is wrong
        return
    if len(shape) >= 3 and shape[0] > MAX_FRAMES:
        raise UserError(f"{name}: {shape[0]} frames; the demo takes at most {MAX_FRAMES}")


def _check_mp4_header(name: str, data: bytes) -> None:
    try:
        import av
    except ImportError:
        return  # the reader refuses .mp4 without PyAV, in one line
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = stream.frames
            seconds = container.duration / 1e6 if container.duration else 0.0
            rate = float(stream.average_rate or 0)
    except Exception:  # noqa: BLE001 - the reader says what is wrong
        return
    frames = frames or int(seconds * rate)
    if frames > MAX_FRAMES:
        raise UserError(f"{name}: {frames} frames; the demo takes at most {MAX_FRAMES}")


def check_upload(name: str, suffix: str, data: bytes, *, max_audio_s: float) -> None:
    """Refuse (UserError) an upload that is empty, or whose header declares too much to decode."""
    if not data:
        raise UserError(f"{name}: empty upload")
    if suffix == ".wav":
        seconds = wav_seconds(data)
        if seconds is not None and seconds > max_audio_s:
            raise UserError(
                f"{name}: {seconds:.1f} s of audio; the demo takes clips of at most "
                f"{max_audio_s:g} s"
            )
    elif suffix in (".png", ".gif"):
        _check_image_header(name, data)
    elif suffix == ".npy":
        _check_npy_header(name, data)
    elif suffix == ".mp4":
        _check_mp4_header(name, data)


@contextlib.contextmanager
def upload_file(data: bytes, suffix: str) -> Iterator[str]:
    """The upload written to a fresh temporary file named by its suffix (the readers choose by
    suffix), deleted afterwards."""
    with tempfile.NamedTemporaryFile(prefix="crossmodal-upload-", suffix=suffix, delete=False) as f:
        f.write(data)
    try:
        yield f.name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(f.name)
