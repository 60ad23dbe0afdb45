"""Folder datasets (data/folders.py): records equal the files after conversion, every kind of bad
file or caption line is one line naming it (or skipped and counted), and a bad folder or a
config.json-less workdir stops main before anything is written."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from crossmodal_jax.data import folders
from crossmodal_jax.data.pipeline import ImageTextFeatures
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import local_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = folders.FolderFormat("image", image_size=8, channels=1, text_max_len=40)
AUDIO = folders.FolderFormat("audio", text_max_len=40, max_samples=16000)
VIDEO = folders.FolderFormat("video", image_size=32, channels=1, frames=8, text_max_len=40)


def _captions(split_dir, rows):
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    (split_dir / folders.CAPTIONS).write_bytes(b"\n".join(lines) + b"\n")


def _image_folder(root, n_train=8, n_test=4, seed=0):
    """root/{train,test}: 8x8 grayscale PNGs with captions; returns {split: {name: pixels}}."""
    rng = np.random.default_rng(seed)
    held = {}
    for split, n in (("train", n_train), ("test", n_test)):
        split_dir = root / split
        split_dir.mkdir(parents=True)
        held[split] = {}
        for i in range(n):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(split_dir / f"{i:03d}.png")
            held[split][f"{i:03d}.png"] = pixels
        _captions(split_dir, [{"file": f, "text": f"image {f}"} for f in held[split]])
    return held


def _one_line_error(path, split="train", fmt=IMAGE, **kwargs):
    with pytest.raises(UserError) as info:
        folders.load_split(path, split, fmt, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# --- records ----------------------------------------------------------------------------------


def test_image_records_equal_the_files_and_feed_the_image_features(tmp_path):
    held = _image_folder(tmp_path)
    gray = tmp_path / "train" / "zz_rgb.png"  # 16x16 RGB: shrunk and converted to 8x8 gray
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(gray)
    rows = [{"file": f, "text": f"image {f}"} for f in held["train"]]
    _captions(tmp_path / "train", [*rows, {"file": "zz_rgb.png", "text": "grey é"}])

    source = folders.load_split(tmp_path, "train", IMAGE)
    assert len(source) == 9
    for i, (name, pixels) in enumerate(held["train"].items()):
        record = source[i]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (8, 8, 1)
        np.testing.assert_array_equal(record["image"][..., 0], pixels)
        assert record["caption"] == f"image {name}".encode() and record["file"] == name.encode()
        assert record["label"] == folders.NO_LABEL
    np.testing.assert_array_equal(source[8]["image"], np.full((8, 8, 1), 100, np.uint8))
    assert source[8]["caption"] == "grey é".encode()

    batch = folders.WithoutLabel(ImageTextFeatures(40, folders.IMAGE_MAX_VALUE)).map(source[0])
    assert set(batch) == {"image", "text", "text_mask"}
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    source[0]["image"][:] = 0  # records are copies: the cache is untouched
    np.testing.assert_array_equal(source[0]["image"][..., 0], held["train"]["000.png"])


def test_audio_is_resampled_to_16khz_int16_and_video_fit_to_the_frame_count(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    pcm16 = (np.sin(np.arange(8000) * 0.05) * 8000).astype(np.int16)
    wavfile.write(split / "a.wav", 16000, pcm16)
    pcm22 = (np.sin(np.arange(11025) * 0.05) * 8000).astype(np.int16)
    wavfile.write(split / "b.wav", 22050, pcm22)
    _captions(split, [{"file": "a.wav", "text": "one"}, {"file": "b.wav", "text": "two"}])
    source = folders.load_split(tmp_path, "train", AUDIO)
    np.testing.assert_array_equal(source[0]["audio"], pcm16)  # 16 kHz int16: exact
    assert source[1]["audio"].dtype == np.int16 and len(source[1]["audio"]) == 8000
    assert "label" not in source[0]

    vsplit = tmp_path / "v" / "train"
    vsplit.mkdir(parents=True)
    clip = np.random.default_rng(0).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    np.save(vsplit / "c.npy", clip)
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(vsplit / "d.gif", save_all=True, append_images=frames[1:])
    _captions(vsplit, [{"file": "c.npy", "text": "clip"}, {"file": "d.gif", "text": "gif"}])
    videos = folders.load_split(tmp_path / "v", "train", VIDEO)
    np.testing.assert_array_equal(videos[0]["video"], clip[..., None])
    gif = videos[1]["video"]
    assert gif.shape == (8, 32, 32, 1)  # 3 frames, padded by repeating the last
    assert [int(f.mean()) for f in gif] == [0, 128] + [255] * 6


# --- bad data: one line naming the file -----------------------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


BAD_IMAGE_FOLDERS = {
    "missing file": (lambda d: (d / "003.png").unlink(), "003.png: file not found (line 4 of"),
    "truncated png": (lambda d: _truncate(d / "002.png"), "002.png: cannot read image"),
    "text named png": (
        lambda d: (d / "001.png").write_text("not an image"),
        "001.png: cannot read image",
    ),
    "caption not utf-8": (
        lambda d: _captions(d, [*_rows(d)[:2], b'{"file": "002.png", "text": "caf\xe9"}']),
        "captions.jsonl: line 3 (002.png): caption line is not valid UTF-8 (byte 0xe9 at",
    ),
    "malformed json": (
        lambda d: _captions(d, [_rows(d)[0], b'{"file": "001.png", "text": ']),
        "captions.jsonl: line 2: not valid JSON",
    ),
    "text not a string": (
        lambda d: _captions(d, [{"file": "000.png", "text": 7}]),
        'captions.jsonl: line 1 (000.png): "text" must be a string, got int',
    ),
    "caption too long": (
        lambda d: _captions(d, [{"file": "000.png", "text": "x" * 40}]),
        "caption is 40 UTF-8 bytes; data.text_max_len=40 holds 39",
    ),
    "listed twice": (
        lambda d: _captions(d, [*_rows(d), _rows(d)[0]]),
        "captions.jsonl: line 9: 000.png is listed twice (first on line 1)",
    ),
    "unlisted file": (
        lambda d: _captions(d, _rows(d)[1:]),
        "000.png: not listed in",
    ),
    "path outside": (
        lambda d: _captions(d, [{"file": "../test/000.png", "text": "x"}]),
        '"file" must be a plain file name',
    ),
    "no captions file": (
        lambda d: (d / "captions.jsonl").unlink(),
        "captions.jsonl: file not found",
    ),
    "empty split": (
        lambda d: [p.unlink() for p in d.iterdir() if p.suffix == ".png"] + [_captions(d, [])],
        "train: no image records; see",
    ),
}


def _rows(split_dir):
    return [{"file": f"{i:03d}.png", "text": f"image {i}"} for i in range(8)]


@pytest.mark.parametrize("kind", list(BAD_IMAGE_FOLDERS))
def test_each_bad_image_folder_is_one_line_naming_the_file(tmp_path, kind):
    _image_folder(tmp_path)
    damage, expected = BAD_IMAGE_FOLDERS[kind]
    damage(tmp_path / "train")
    message = _one_line_error(tmp_path)
    assert expected in message, message
    assert str(tmp_path / "train") in message


def test_captions_must_fit_a_word_vocabulary(tmp_path):
    _image_folder(tmp_path)
    _captions(tmp_path / "train", _rows(tmp_path))  # "image 0", "image 1", ...
    words = dataclasses.replace(IMAGE, words=("image", *map(str, range(8))), text_max_len=3)
    assert len(folders.load_split(tmp_path, "train", words)) == 8  # 2 words + end token fit
    _captions(tmp_path / "train", [*_rows(tmp_path)[:3], {"file": "003.png", "text": "a cat"}])
    message = _one_line_error(tmp_path, fmt=words)
    assert "line 4 (003.png): caption word 'a' is not in data.text_words" in message, message
    short = dataclasses.replace(words, words=(*words.words, "a", "cat"), text_max_len=2)
    message = _one_line_error(tmp_path, fmt=short)
    assert "caption is 2 words; data.text_max_len=2 holds 1" in message, message


def _wav_folder(tmp_path, write):
    split = tmp_path / "train"
    split.mkdir(parents=True)
    write(split / "a.wav")
    _captions(split, [{"file": "a.wav", "text": "one"}])
    return _one_line_error(tmp_path, fmt=AUDIO)


def test_bad_wav_files_are_one_line_naming_the_file(tmp_path):
    tone = (np.sin(np.arange(4000) * 0.1) * 8000).astype(np.int16)

    def npy_named_wav(p):
        with open(p, "wb") as f:
            np.save(f, tone[None, None])  # a 3-D array, not a WAV file

    message = _wav_folder(tmp_path / "a", npy_named_wav)
    assert "a.wav: cannot read WAV audio" in message and "line 1 of" in message
    message = _wav_folder(tmp_path / "b", lambda p: wavfile.write(p, 4000, tone))
    assert "a.wav: sample rate 4000 Hz is below the 8000 Hz speech needs" in message

    def truncated(p):
        wavfile.write(p, 16000, tone)
        p.write_bytes(p.read_bytes()[:2000])

    assert "a.wav: cannot read WAV audio" in _wav_folder(tmp_path / "c", truncated)
    long = (np.sin(np.arange(40000) * 0.1) * 8000).astype(np.int16)  # 2.5 s, 1 s fits
    message = _wav_folder(tmp_path / "d", lambda p: wavfile.write(p, 16000, long))
    assert "a.wav: 2.50 s of sound after trimming silence" in message


def test_bad_npy_video_is_one_line_naming_the_file(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    np.save(split / "c.npy", np.zeros((32, 32), np.uint8))  # one frame's shape, no time axis
    _captions(split, [{"file": "c.npy", "text": "clip"}])
    message = _one_line_error(tmp_path, fmt=VIDEO)
    assert "c.npy: video shape (32, 32, 1)" in message or "c.npy: video shape" in message


def test_skip_bad_records_skips_counts_and_still_refuses_an_empty_split(tmp_path, caplog):
    _image_folder(tmp_path, n_train=10)
    split = tmp_path / "train"
    _truncate(split / "001.png")
    (split / "004.png").unlink()
    rows = [{"file": f"{i:03d}.png", "text": f"image {i}"} for i in range(10)]
    _captions(split, [*rows, b"{oops"])
    with caplog.at_level(logging.WARNING, logger="crossmodal_jax"):
        source = folders.load_split(tmp_path, "train", IMAGE, skip_bad_records=True)
    assert len(source) == 8
    assert [r["file"] for r in source.__getitems__(range(8))] == [
        f"{i:03d}.png".encode() for i in (0, 2, 3, 5, 6, 7, 8, 9)
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"skipped 3 of 11 records in {split}: line 11 (not JSON), 001.png (cannot read image), "
        "004.png (file not found)"
    ]

    for p in split.glob("*.png"):
        p.write_text("broken")
    message = _one_line_error(tmp_path, skip_bad_records=True)
    assert message.startswith(f"{split}: no image records (all 11 skipped as bad)")


def test_source_is_cached_until_the_folder_changes(tmp_path):
    _image_folder(tmp_path)
    first = folders.load_split(tmp_path, "train", IMAGE)
    assert folders.load_split(tmp_path, "train", IMAGE) is first
    _truncate(tmp_path / "train" / "005.png")
    assert "005.png: cannot read image" in _one_line_error(tmp_path)


# --- through the config and main ------------------------------------------------------------------

WRAPPER = """
import importlib.util
from crossmodal_jax.config import blocks
_spec = importlib.util.spec_from_file_location("_img2txt", {path!r})
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

def get_config(arg=None):
    c = _mod.get_config(arg)
    if "path" not in c.data:  # until configs/img2txt.py calls blocks.folder_data itself
        blocks.folder_data(c.data, "image")
    c.data.text_words, c.data.text_max_len = "", 40  # free-form captions: UTF-8 bytes
    return c
"""


@pytest.fixture
def folder_config_file(tmp_path):
    path = tmp_path / "img2txt_folder.py"
    path.write_text(WRAPPER.format(path=os.path.join(ROOT, "configs", "img2txt.py")))
    return path


def _main(*args):
    # The suite's XLA flags (tests/conftest.py), with 2 devices as the CLI tests use.
    flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=2")
    env = dict(os.environ, XLA_FLAGS=flags)
    return subprocess.run(
        [sys.executable, "-m", "crossmodal_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_folder_config_gives_model_shapes_without_reading_files(tmp_path, folder_config_file):
    import ml_collections

    spec = __import__("importlib.util").util.spec_from_file_location("w", folder_config_file)
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    _image_folder(tmp_path / "data", n_train=16)
    config.data.name, config.data.path = "folder", str(tmp_path / "data")
    config = ml_collections.ConfigDict(config.to_dict())
    exp = local_experiment(config)
    assert exp.input_shape == (8, 8, 1)
    batch = next(exp.batches("test", 4))
    assert batch["image"].shape == (4, 8, 8, 1) and "label" not in batch


def test_main_on_a_broken_folder_fails_in_one_line_and_writes_no_workdir(
    tmp_path, folder_config_file
):
    _image_folder(tmp_path / "data", n_train=16)
    _truncate(tmp_path / "data" / "test" / "002.png")  # the test split is checked up front too
    workdir = tmp_path / "run"
    result = _main(
        f"--config={folder_config_file}:smoke",
        "--config.data.name=folder",
        f"--config.data.path={tmp_path / 'data'}",
        f"--workdir={workdir}",
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {tmp_path / 'data' / 'test' / '002.png'}: cannot read")
    assert not workdir.exists()


def test_text_to_image_trains_on_an_image_folder(tmp_path):
    """An image folder feeds text→image too: captions are the prompts, images the targets; with
    no class labels the evaluation has no classifier distance (FID needs InceptionV3 weights)."""
    from configs import vqdit_img
    from crossmodal_jax.evaluation import image_generation

    held = _image_folder(tmp_path / "f")
    config = vqdit_img.get_config("smoke")
    config.data.update(name="folder", path=str(tmp_path / "f"))
    exp = local_experiment(config)
    assert exp.input_shape == (8, 8, 1)
    batch = next(exp.batches("test", 4))
    assert set(batch) == {"image", "text", "text_mask"}  # no labels in a folder
    np.testing.assert_allclose(
        batch["image"][..., 0],
        np.stack([held["test"][f"{i:03d}.png"] for i in range(4)]) / 127.5 - 1.0,
        atol=1e-6,
    )
    captions = exp.text.decode_batch(batch["text"])
    assert captions == [f"image {i:03d}.png" for i in range(4)]
    images = batch["image"]
    assert image_generation.classifier_metrics(exp, images, images, None) == {}


def test_a_folder_changed_since_the_workdirs_first_run_is_refused_unless_allowed(tmp_path, caplog):
    from configs import vqdit_img
    from crossmodal_jax.config.workdir import write_data_fingerprint
    from crossmodal_jax.run import build_experiment

    _image_folder(tmp_path / "f", n_train=16)
    config = vqdit_img.get_config("smoke")
    config.data.update(name="folder", path=str(tmp_path / "f"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    exp = build_experiment(config, str(workdir), {"data": 8})
    write_data_fingerprint(exp.dataset, str(workdir))  # as the first run does
    build_experiment(config, str(workdir), {"data": 8})  # unchanged: resumes
    flat = Image.fromarray(np.zeros((8, 8), np.uint8))  # compresses to another file size
    flat.save(tmp_path / "f" / "test" / "000.png")  # other splits do not matter
    build_experiment(config, str(workdir), {"data": 8})
    flat.save(tmp_path / "f" / "train" / "003.png")  # a training image replaced
    with pytest.raises(UserError) as e:
        build_experiment(config, str(workdir), {"data": 8})
    message = str(e.value)
    assert message.startswith("data.name='folder': the training data changed since the first")
    assert "same number of records (17), other names or sizes" in message
    assert "--config.data.allow_changed_data=True" in message and "\n" not in message
    config.data.allow_changed_data = True  # the user asks to go on: a warning
    build_experiment(config, str(workdir), {"data": 8})
    assert "training data changed since this workdir's first run" in caplog.text
