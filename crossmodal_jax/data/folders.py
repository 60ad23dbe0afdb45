"""Folder datasets: a user's images, WAV clips or videos with their captions, as a grain source.

Selected with ``data.name = "folder"``, ``data.path = DIR`` and ``data.modality``. Format::

    DIR/train/captions.jsonl     one {"file": "<name>", "text": "<caption or transcript>"} a line
    DIR/train/<name>             image: .png .jpg .jpeg   audio: .wav   video: .gif .npy .mp4
    DIR/test/...                 the same; the test split is evaluated, never trained on

``file`` is a plain file name inside the split folder; ``text`` a non-empty string that fits in
``data.text_max_len - 1`` tokens (UTF-8 bytes, or words of ``data.text_words`` when it lists
any). Blank lines are ignored. Every file of the modality's suffixes in the split folder must be
listed, once (an unlisted file is almost always a forgotten caption). Files are converted, as the
sample CLI converts its inputs (``files.py``): images and video frames to ``data.image_size``
squared with ``data.channels``, clips to ``data.frames``, audio to 16 kHz mono; a WAV below
``MIN_SAMPLE_RATE`` or longer than ``data.audio.num_samples`` once its silence is trimmed is
refused (its transcript would not match what the model hears).

Records follow the embedded datasets of the same modality, so the feature transforms of
``data/modalities.py`` apply unchanged: ``{"image": uint8 [S,S,C] 0..255, "label", "caption", "file"}``
(like ``digits``), ``{"audio": int16 [T] at 16 kHz, "caption", "file"}`` (like ``spoken_digits``),
``{"video": uint8 [F,S,S,C] 0..255, "label", "caption", "file"}`` (like ``moving_digits``);
``caption`` and ``file`` are UTF-8 bytes and ``label`` is ``NO_LABEL`` (folders have none).

Validation happens once, when the source is built (before anything is compiled or written): every
line parses and every file decodes. The first problem raises ``UserError``, one line naming the
file (and the captions line); with ``skip_bad_records`` bad records are skipped instead and
reported in one warning line. A split with no usable record is always an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import grain
import numpy as np

from crossmodal_jax.data import audio, files
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.data.spoken_digits import to_int16
from crossmodal_jax.errors import UserError

log = logging.getLogger("crossmodal_jax")

NAME = "folder"
SPLITS = ("train", "test")
CAPTIONS = "captions.jsonl"
NO_LABEL = -1
IMAGE_MAX_VALUE = 255  # folder images/videos keep their 8-bit pixels (as the sample CLI reads them)
MIN_SAMPLE_RATE = 8000  # below this the speech band (and the mel bands up to 8 kHz) is missing
_SHOWN_PROBLEMS = 5  # bad records named in the skip warning
_BLANK = {"caption": b"", "file": b""}


@dataclasses.dataclass(frozen=True)
class FolderFormat:
    """What records of a folder must become (hashable: it keys the source cache)."""

    modality: str  # "image" | "audio" | "video"
    image_size: int = 8  # images and video frames: resized to image_size x image_size
    channels: int = 1  # 1 grayscale, 3 RGB
    frames: int = 8  # videos: centre-cut or padded to this many frames
    text_max_len: int = 0  # captions must fit in text_max_len - 1 tokens (0: any length)
    words: tuple[str, ...] = ()  # the caption tokenizer's word vocabulary (() = UTF-8 bytes)
    max_samples: int = 0  # audio: longest clip at 16 kHz after trimming silence (0: any)

    @classmethod
    def from_config(cls, data_cfg) -> FolderFormat:
        if "path" not in data_cfg or "modality" not in data_cfg:
            raise UserError(
                "this config has no folder keys (data.path, data.modality); add "
                "blocks.folder_data(c.data, <modality>) to its config file"
            )
        modality = data_cfg.modality
        if modality not in MODALITIES:
            raise UserError(
                f"unknown data.modality {modality!r}; available: {', '.join(MODALITIES)}"
            )
        kwargs: dict[str, Any] = {
            "modality": modality,
            "text_max_len": data_cfg.text_max_len,
            "words": tuple(data_cfg.text_words.split()),
        }
        if modality in ("image", "video"):
            kwargs.update(image_size=data_cfg.image_size, channels=data_cfg.channels)
            if data_cfg.image_size < 1:
                raise UserError(f"data.image_size must be >= 1, got {data_cfg.image_size}")
            if data_cfg.channels not in (1, 3):
                raise UserError(f"data.channels must be 1 or 3, got {data_cfg.channels}")
        if modality == "video":
            kwargs["frames"] = data_cfg.frames
            if data_cfg.frames < 1:
                raise UserError(f"data.frames must be >= 1, got {data_cfg.frames}")
        if modality == "audio":
            kwargs["max_samples"] = data_cfg.audio.num_samples
        return cls(**kwargs)


def example_record(fmt: FolderFormat) -> dict[str, Any]:
    """A blank record of the format's shapes: model input shapes without reading any file."""
    if fmt.modality == "audio":
        return {"audio": np.zeros((fmt.max_samples or audio.SAMPLE_RATE,), np.int16), **_BLANK}
    side = (fmt.image_size, fmt.image_size, fmt.channels)
    shape = side if fmt.modality == "image" else (fmt.frames, *side)
    return {fmt.modality: np.zeros(shape, np.uint8), "label": np.int32(NO_LABEL), **_BLANK}


# --- decoding one file ----------------------------------------------------------------------------


def _decode(path: Path, fmt: FolderFormat) -> dict[str, np.ndarray]:
    """The media fields of one record; InputFileError (one line naming the file) if unusable."""
    size = (fmt.image_size, fmt.image_size)
    if fmt.modality == "image":
        return {"image": files.read_image(path, size, fmt.channels)}
    if fmt.modality == "video":
        return {"video": files.read_video(path, fmt.frames, size, fmt.channels)}
    wave, rate = files.read_wav(path)
    if rate < MIN_SAMPLE_RATE:
        raise files.InputFileError(
            f"{path}: sample rate {rate} Hz is below the {MIN_SAMPLE_RATE} Hz speech needs"
        )
    wave = audio.resample(wave, rate, audio.SAMPLE_RATE)
    if fmt.max_samples:
        speech = len(audio.trim_silence(wave, audio.SAMPLE_RATE))
        if speech > fmt.max_samples:
            raise files.InputFileError(
                f"{path}: {speech / audio.SAMPLE_RATE:.2f} s of sound after trimming silence; "
                f"data.audio.num_samples={fmt.max_samples} holds "
                f"{fmt.max_samples / audio.SAMPLE_RATE:.2f} s"
            )
    return {"audio": to_int16(wave)}


# --- validation -----------------------------------------------------------------------------------


class _Problems:
    """Raises the first problem, or (skip mode) collects `name (reason)` for the warning."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.short: list[str] = []

    def __call__(self, message: str, short: str) -> None:
        if not self.skip:
            raise UserError(message)
        self.short.append(short)


def _utf8_error(line: bytes, e: UnicodeDecodeError) -> str:
    return f"caption line is not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"


@lru_cache(maxsize=8)
def _tokenizer(words: tuple[str, ...]) -> text_lib.TextTokenizer:
    """One tokenizer per vocabulary, not one per caption line."""
    return text_lib.TextTokenizer(words)


def _parse_line(
    line: bytes, where: str, fmt: FolderFormat, split_dir: Path
) -> tuple[str | None, str | None, str]:
    """(file name or None, error message or None, short reason) of one captions line."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        # Name the file if the rest of the line still parses, so the report says which record.
        try:
            name = json.loads(line.decode("utf-8", errors="replace")).get("file")
        except (ValueError, AttributeError):
            name = None
        name = name if isinstance(name, str) else None
        label = f" ({name})" if name else ""
        return name, f"{where}{label}: {_utf8_error(line, e)}", "not UTF-8"
    except json.JSONDecodeError as e:
        return None, f"{where}: not valid JSON ({e.msg} at column {e.colno})", "not JSON"
    if not isinstance(obj, dict):
        return None, f'{where}: expected an object {{"file": ..., "text": ...}}', "not an object"
    name, text = obj.get("file"), obj.get("text")
    if not isinstance(name, str) or not name:
        return None, f'{where}: "file" must be a file name (a non-empty string)', "no file"
    if name != os.path.basename(name) or name in (".", "..") or "\\" in name:
        return None, f'{where}: "file" must be a plain file name in {split_dir}, got {name!r}', name
    if Path(name).suffix.lower() not in MODALITIES[fmt.modality].folder_suffixes:
        kinds = " ".join(MODALITIES[fmt.modality].folder_suffixes)
        return name, f"{where}: {name} is not a {fmt.modality} file ({kinds})", "wrong type"
    at = f"{where} ({name})"
    if not isinstance(text, str):
        return name, f'{at}: "text" must be a string, got {type(text).__name__}', "no caption"
    if not text.strip():
        return name, f'{at}: "text" is empty', "empty caption"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as a \ud800 escape
        return name, f"{at}: caption is not valid UTF-8 (lone surrogate escape)", "not UTF-8"
    tokenizer = _tokenizer(fmt.words)
    unknown = tokenizer.unknown_words(text)
    if unknown:
        return (
            name,
            f"{at}: caption word {unknown[0]!r} is not in data.text_words (list it there, or set "
            f'data.text_words="" for UTF-8 bytes)',
            "unknown word",
        )
    n_tokens = tokenizer.length(text)
    if fmt.text_max_len and n_tokens > fmt.text_max_len - 1:
        unit = "words" if fmt.words else "UTF-8 bytes"
        return (
            name,
            f"{at}: caption is {n_tokens} {unit}; data.text_max_len={fmt.text_max_len} "
            f"holds {fmt.text_max_len - 1}",
            "caption too long",
        )
    return name, None, text


def _read_captions(split_dir: Path, fmt: FolderFormat, bad: _Problems):
    """[(line number, file name, caption)] of the good lines, names seen, and the line count."""
    captions = split_dir / CAPTIONS
    if not captions.is_file():
        raise UserError(f"{captions}: file not found (each split folder needs one; see data.path)")
    try:
        raw = captions.read_bytes()
    except OSError as e:
        raise UserError(f"{captions}: cannot read ({e.strerror or e})") from None
    entries, seen, candidates = [], {}, 0
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        candidates += 1
        where = f"{captions}: line {line_no}"
        name, error, detail = _parse_line(line, where, fmt, split_dir)
        if name is not None and name in seen:
            error, detail = f"{where}: {name} is listed twice (first on line {seen[name]})", "twice"
        if name is not None:
            seen.setdefault(name, line_no)
        if error is not None:
            bad(error, f"{name or f'line {line_no}'} ({detail})")
            continue
        entries.append((line_no, name, detail))
    return entries, seen, candidates


def _load_split(root: Path, split: str, fmt: FolderFormat, skip: bool) -> list[dict[str, Any]]:
    split_dir = root / split
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found (data.path)")
    if not split_dir.is_dir():
        raise UserError(
            f"{split_dir}: split folder not found (a folder dataset holds {' and '.join(SPLITS)})"
        )
    bad = _Problems(skip)
    entries, seen, total = _read_captions(split_dir, fmt, bad)
    captions = split_dir / CAPTIONS
    for p in sorted(split_dir.iterdir(), key=lambda p: p.name):
        if (
            p.suffix.lower() in MODALITIES[fmt.modality].folder_suffixes
            and p.name not in seen
            and p.is_file()
        ):
            total += 1
            bad(
                f"{p}: not listed in {captions} (every file needs a caption line)",
                f"{p.name} (no caption)",
            )
    records = []
    for line_no, name, text in entries:
        try:
            fields = _decode(split_dir / name, fmt)
        except files.InputFileError as e:
            reason = str(e).removeprefix(f"{split_dir / name}: ").split(":")[0]
            bad(f"{e} (line {line_no} of {captions})", f"{name} ({reason})")
            continue
        if fmt.modality != "audio":
            fields["label"] = np.int32(NO_LABEL)
        records.append({**fields, "caption": text.encode("utf-8"), "file": name.encode("utf-8")})
    if bad.short:
        more = len(bad.short) - _SHOWN_PROBLEMS
        shown = ", ".join(bad.short[:_SHOWN_PROBLEMS]) + (f", and {more} more" if more > 0 else "")
        log.warning("skipped %d of %d records in %s: %s", len(bad.short), total, split_dir, shown)
    if not records:
        skipped = f" (all {total} skipped as bad)" if bad.short else ""
        raise UserError(f"{split_dir}: no {fmt.modality} records{skipped}; see {captions}")
    return records


class FolderSource:
    """Random-access source over one validated split (grain ``RandomAccessDataSource`` protocol).

    Holds the decoded records in memory. Folder datasets here are small (thousands of files of
    kilobytes), and validation has to decode every file anyway: keeping the result costs one
    copy of the data and buys (1) no second decode per epoch, (2) training on exactly what was
    validated, so a file edited or deleted mid-run cannot fail at hour three. Pickles with its
    records, so grain workers need no access to the folder.
    """

    def __init__(self, directory: str, records: list[dict[str, Any]]):
        self.directory = directory
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Copies: a transform that writes in place must not change the cached record.
        return {
            k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self._records[index].items()
        }

    def __getitems__(self, indices) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"FolderSource({self.directory!r}, len={len(self)})"


def _fingerprint(split_dir: Path) -> tuple:
    """Names, sizes and mtimes of the split folder: a rebuilt cache entry after any edit."""
    try:
        stats = [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(split_dir)]
    except OSError:
        return ()
    return tuple(sorted(stats))


@lru_cache(maxsize=8)
def _cached(path: str, split: str, fmt: FolderFormat, skip: bool, fingerprint: tuple):
    del fingerprint  # only part of the cache key
    return FolderSource(str(Path(path) / split), _load_split(Path(path), split, fmt, skip))


def load_split(
    path: str | os.PathLike, split: str, fmt: FolderFormat, *, skip_bad_records: bool = False
) -> FolderSource:
    """The validated records of ``path/split`` (cached per process until the folder changes)."""
    if split not in SPLITS:
        raise UserError(
            f"unknown split {split!r} of a folder dataset; available: {', '.join(SPLITS)}"
        )
    path = os.path.abspath(os.path.expanduser(str(path)))
    fingerprint = _fingerprint(Path(path) / split)
    return _cached(path, split, fmt, bool(skip_bad_records), fingerprint)


def get_source(data_cfg, split: str) -> FolderSource:
    """The ``data.name = "folder"`` source of a config's data block."""
    fmt = FolderFormat.from_config(data_cfg)
    if not data_cfg.path:
        raise UserError("data.name='folder' needs data.path=DIR, a folder holding train/ and test/")
    return load_split(data_cfg.path, split, fmt, skip_bad_records=data_cfg.skip_bad_records)


class WithoutLabel(grain.transforms.Map):
    """An embedded dataset's transform, minus the ``label`` its output carries: folder records
    have none, and evaluation scores digit naming only where a batch has labels."""

    def __init__(self, inner: grain.transforms.Map):
        self.inner = inner

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = dict(self.inner.map(element))
        out.pop("label", None)
        return out

    def __repr__(self) -> str:
        return f"WithoutLabel({self.inner!r})"
