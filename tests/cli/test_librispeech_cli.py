"""configs/librispeech_s2t.py:smoke end to end on a fresh checkout: tfds's own mock LibriSpeech
(nothing prepared), clips padded at the end with their frame mask. main trains the tokenizer and
the generator and evaluates (WER in metrics.json); the sample CLI captions a .wav longer than the
centre-cut clips of the embedded speech configs (3.07 s at most), whole. (Resuming is the same
code for every config: tests/cli/test_resume.py.)
"""

import json
import os

import numpy as np
import pytest
from cli_helpers import read_jsonl, run_cli

CONFIG = "configs/librispeech_s2t.py:smoke"
pytest.importorskip("tensorflow")  # tfds's librispeech builder decodes with it (the tfds extra)


@pytest.fixture(scope="session")
def librispeech_run(smoke_workdir):
    """(workdir, main's output): trained once per test run, read-only afterwards."""
    workdir, _, log = smoke_workdir(CONFIG)
    return workdir, log


def test_smoke_trains_and_reports_wer(librispeech_run):
    workdir, log = librispeech_run
    assert "[generator] finished 6 steps" in log
    rows = read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6]  # logged every 2 steps
    assert all(np.isfinite(r["loss"]) for r in rows)
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in ("test_wer", "test_cer", "test_psnr_db", "test_codebook_usage"):
        assert key in metrics and np.isfinite(metrics[key]), key
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["data"]["audio"]["padding"] == "end" and config["data"]["tfds_mock_examples"]
    assert len(read_jsonl(os.path.join(workdir, "test_captions.jsonl"))) == 16


def test_sample_cli_captions_a_clip_longer_than_the_centre_cut_ones(librispeech_run, tmp_path):
    from scipy.io import wavfile

    workdir, _ = librispeech_run
    folder = tmp_path / "in"
    folder.mkdir()
    rate = 22050  # resampled to 16 kHz, not refused
    t = np.arange(int(3.5 * rate)) / rate  # 3.5 s: the smoke holds 4.1 s
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wavfile.write(folder / "long.wav", rate, (wave * 32767).astype(np.int16))
    wavfile.write(folder / "short.wav", rate, (wave[: rate // 2] * 32767).astype(np.int16))
    out = tmp_path / "out"
    result = run_cli("sample", f"--workdir={workdir}", f"--input={folder}", f"--output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cut at the end" not in result.stderr  # the whole clip was read
    rows = read_jsonl(out / "outputs.jsonl")
    assert [r["input"] for r in rows] == ["long.wav", "short.wav"]
    assert all(isinstance(r["text"], str) for r in rows)


def test_sample_cli_names_a_broken_wav(librispeech_run, tmp_path):
    """(The speech→text case of test_tasks_cli.py's broken-input test, which no longer trains
    configs/speech2txt.py: this smoke run covers its task.)"""
    workdir, _ = librispeech_run
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.wav").write_bytes(b"not really a media file")
    out = tmp_path / "out"
    result = run_cli("sample", f"--workdir={workdir}", f"--input={folder}", f"--output={out}")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "broken.wav" in result.stderr and not out.exists()
