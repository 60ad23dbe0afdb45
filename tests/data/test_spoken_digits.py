"""spoken_digits: transcripts, voices per split, 16 kHz, SNR by construction, determinism, features.

Synthesis is real (espeak-ng) but only a handful of utterances go through ``generate_split``'s code
path; plan-level checks (voices, ranges) run over the whole split without synthesizing.
"""

import pickle
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from scipy.io import wavfile

from crossmodal_jax.data import audio, features, spoken_digits, text
from crossmodal_jax.errors import UserError

WORD = "(zero|one|two|three|four|five|six|seven|eight|nine)"
TRANSCRIPT_RE = re.compile(rf"^{WORD}( {WORD}){{0,3}}$")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
COUNTS = {"train": 10, "test": 6}


@pytest.fixture(scope="module")
def records():
    return {split: spoken_digits.generate_split(split, n) for split, n in COUNTS.items()}


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_plan_voices_and_ranges_over_the_full_splits():
    seen = {}
    for split, size in spoken_digits.SPLIT_SIZES.items():
        plan = [spoken_digits.utterance(split, i) for i in range(size)]
        seen[split] = {u.variant for u in plan}
        assert seen[split] == set(spoken_digits.VARIANTS[split])
        assert {len(u.text.split(" ")) for u in plan} == {1, 2, 3, 4}
        assert all(TRANSCRIPT_RE.match(u.text) for u in plan)
        assert min(u.speed for u in plan) >= 130 and max(u.speed for u in plan) <= 190
        assert min(u.pitch for u in plan) >= 30 and max(u.pitch for u in plan) <= 70
        assert all(20.0 <= u.snr_db <= 40.0 for u in plan)
    assert seen["train"] == {"m1", "m2", "m3", "m4", "f1", "f2"}
    assert seen["test"] == {"m5", "m7", "f3", "f4"}
    assert 3000 <= spoken_digits.SPLIT_SIZES["train"] <= 5000
    assert 400 <= spoken_digits.SPLIT_SIZES["test"] <= 800


def test_missing_espeak_says_how_to_install(monkeypatch):
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError) as excinfo:
        spoken_digits.generate_split("test", 1)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError) and "\n" not in message
    for hint in ("apt-get install espeak-ng", "brew install espeak-ng", "make install-system-deps"):
        assert hint in message


@needs_espeak
def test_records_fields_transcripts_and_voices(records):
    for split, recs in records.items():
        assert len(recs) == COUNTS[split]
        for i, r in enumerate(recs):
            assert set(r) == {"audio", "caption", "variant", "num_words"}
            assert r["audio"].dtype == np.int16 and r["audio"].ndim == 1
            assert 0.3 * audio.SAMPLE_RATE < len(r["audio"]) < 3.0 * audio.SAMPLE_RATE
            transcript = r["caption"].decode("utf-8")
            assert TRANSCRIPT_RE.match(transcript), transcript
            assert r["num_words"].dtype == np.int32
            assert int(r["num_words"]) == len(transcript.split(" "))
            assert r["variant"].decode() in spoken_digits.VARIANTS[split]
            assert transcript == spoken_digits.utterance(split, i).text


@needs_espeak
def test_espeak_is_deterministic_and_resampled_to_16khz(workdir):
    u = spoken_digits.utterance("test", 0)
    a = spoken_digits.synthesize(u, workdir)
    np.testing.assert_array_equal(a, spoken_digits.synthesize(u, workdir))
    raw = f"{workdir}/raw.wav"
    subprocess.run(
        ["espeak-ng", "-v", f"en+{u.variant}", "-s", str(u.speed), "-p", str(u.pitch)]
        + ["-w", raw, u.text],
        check=True,
    )
    sr, pcm = wavfile.read(raw)
    assert len(a) == int(np.ceil(len(pcm) * audio.SAMPLE_RATE / sr))


@needs_espeak
def test_snr_matches_the_draw(records, workdir):
    for split, recs in records.items():
        for i, r in enumerate(recs):
            u = spoken_digits.utterance(split, i)
            clean = spoken_digits.synthesize(u, workdir)
            noise = r["audio"].astype(np.float64) / 32768.0 - clean
            snr = 10 * np.log10(spoken_digits.speech_power(clean) / np.mean(noise**2))
            assert abs(snr - u.snr_db) < 0.3, (split, i, snr, u.snr_db)
            assert 19.7 < snr < 40.3


@needs_espeak
def test_generation_is_deterministic_and_prefix_stable(records):
    again = spoken_digits.generate_split("test", 3, workers=1)
    for a, b in zip(records["test"][:3], again, strict=True):
        np.testing.assert_array_equal(a["audio"], b["audio"])
        assert a["caption"] == b["caption"] and a["variant"] == b["variant"]


@needs_espeak
def test_trim_keeps_the_speech_span(records, workdir):
    for i, r in enumerate(records["train"]):
        clean = spoken_digits.synthesize(spoken_digits.utterance("train", i), workdir)
        active = np.nonzero(np.abs(clean) >= 0.01 * np.abs(clean).max())[0]
        span = active[-1] - active[0]
        trimmed = audio.trim_silence(r["audio"].astype(np.float32) / 32768.0)
        # Quiet word edges may go, but never much speech; trailing silence/noise mostly goes.
        assert 0.85 * span < len(trimmed) < span + 0.25 * audio.SAMPLE_RATE, (i, span, len(trimmed))


@needs_espeak
def test_audio_text_features(records):
    transform = pickle.loads(pickle.dumps(features.AudioTextFeatures(text_max_len=32)))
    assert transform.feature_shape == (192, 32, 1)
    r = records["test"][0]
    out = transform.map(r)
    assert set(out) == {"audio", "text", "text_mask"}
    assert out["audio"].shape == (192, 32, 1) and out["audio"].dtype == np.float32
    assert -1.0 <= out["audio"].min() and out["audio"].max() <= 1.0
    assert out["audio"].max() > 0.0  # speech reaches well above the floor
    assert text.decode(out["text"]) == r["caption"].decode()
    # The transform and the inference helper are one code path.
    wave = r["audio"].astype(np.float32) / 32768.0
    np.testing.assert_array_equal(out["audio"], features.audio_features(wave, 16000))
