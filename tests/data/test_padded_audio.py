"""data.audio.padding = "end" (data/padded_audio.py): clips padded at the end, not centre-cut, with
a frame mask; the default "centre" keeps every existing config's batches as they were."""

import json
import logging

import numpy as np
import pytest
from scipy.io import wavfile

from crossmodal_jax.config import blocks, workdir
from crossmodal_jax.data import audio, features, padded_audio
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError

SR = audio.SAMPLE_RATE
HOP = 256


def _speech(seconds: float, seed: int = 0, rate: int = SR) -> np.ndarray:
    """A voiced-sounding signal (a wobbling harmonic tone), loud from the first sample to the last
    so trimming keeps it whole."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    wave = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 6))
    return (0.2 * wave + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.mark.parametrize("kept", [0, 1, HOP - 1, HOP, HOP + 1, 10 * HOP, 16 * HOP])
def test_the_mask_covers_every_frame_that_reads_the_clip(kept):
    num_samples = 16 * HOP
    mask = padded_audio.frame_mask(kept, num_samples, HOP)
    assert mask.shape == (16,) and mask.dtype == np.int32
    # A frame holds the clip when its hop block starts inside it; an empty clip keeps one frame.
    expected = min(16, max(1, -(-kept // HOP)))
    assert mask.tolist() == [1] * expected + [0] * (16 - expected)


def test_clips_are_padded_at_the_end_and_long_ones_cut_there_with_one_warning(caplog):
    x = np.arange(1, 11, dtype=np.float32)
    padded, kept = padded_audio.pad_end(x, 16)
    assert kept == 10 and padded[:10].tolist() == x.tolist() and not padded[10:].any()
    padded_audio._warned = False
    with caplog.at_level(logging.WARNING, logger="crossmodal_jax"):
        cut, kept = padded_audio.pad_end(x, 4)
        padded_audio.pad_end(x, 4)
    assert kept == 4 and cut.tolist() == [1, 2, 3, 4]  # the start is kept
    warnings = [r for r in caplog.records if "cut at the end" in r.getMessage()]
    assert len(warnings) == 1


def test_padded_features_do_not_depend_on_the_clips_room():
    clip = _speech(1.3)
    short, short_mask = features.audio_example(clip, SR, num_samples=24 * 1024, padding="end")
    long, long_mask = features.audio_example(clip, SR, num_samples=48 * 1024, padding="end")
    n = int(short_mask.sum())
    assert n == int(long_mask.sum()) == -(-len(audio.trim_silence(clip, SR)) // HOP)
    assert short.shape == (96, 32, 1) and long.shape == (192, 32, 1)
    # Where the clip is, the frames are the same whatever room is left after it (not centred).
    np.testing.assert_array_equal(short[:n], long[:n])
    # The padding is silence, exactly, in every padded frame.
    assert (short[n:] == padded_audio.PAD_VALUE).all() and (
        long[n:] == padded_audio.PAD_VALUE
    ).all()
    # Centred (the default), the same clip moves with the room and every frame counts.
    centred, ones = features.audio_example(clip, SR, num_samples=48 * 1024)
    assert ones.all() and not np.array_equal(centred[:n], long[:n])
    np.testing.assert_array_equal(centred, features.audio_features(clip, SR, num_samples=48 * 1024))


@pytest.mark.parametrize("seconds", [0.0, 0.3, 1.3, 3.0, 3.2])
def test_only_the_frames_with_sound_are_computed_and_equal_the_whole_clips(seconds):
    # The 25 ms / 10 ms front end of configs/librispeech_s2t.py; 3.2 s is cut at 3.072 s.
    settings = dict(n_fft=400, hop=160, n_mels=80, fmin=20.0, fmax=8000.0)
    x = _speech(seconds) if seconds else np.zeros(0, np.float32)
    got, mask = padded_audio.end_padded_log_mel(x, 49152, **settings)
    padded, _ = padded_audio.pad_end(x, 49152)
    whole = audio.normalize_log_mel(audio.log_mel_spectrogram(padded, **settings))
    whole[mask == 0] = padded_audio.PAD_VALUE
    # Equal up to float32 rounding: numpy's BLAS may round the mel product of a shorter spectrogram
    # differently in the last bit (1.8e-7 seen on an AMX Xeon); the padding is exact.
    np.testing.assert_allclose(got[..., 0], whole, rtol=1e-5, atol=1e-6)
    assert (got[mask == 0] == padded_audio.PAD_VALUE).all()


def test_the_batch_has_a_mask_only_when_padded_at_the_end():
    record = {"audio": (_speech(0.7) * 32767).astype(np.int16), "caption": b"a few words"}
    centred = features.AudioTextFeatures(text_max_len=16).map(record)
    assert centred.keys() == {"audio", "text", "text_mask"}  # the batches of every existing config
    padded = features.AudioTextFeatures(text_max_len=16, padding="end").map(record)
    assert padded.keys() == {"audio", "audio_mask", "text", "text_mask"}
    assert padded["audio_mask"].shape == (192,) and 0 < padded["audio_mask"].sum() < 192
    with pytest.raises(
        UserError, match=r"^unknown data.audio.padding 'left'; available: centre, end$"
    ):
        features.AudioTextFeatures(text_max_len=16, padding="left")


def test_the_sample_cli_reads_a_wav_with_its_mask(tmp_path):
    data = blocks.data("folder", "audio")
    data.audio.update(num_samples=81920, padding="end")  # 5.12 s
    path = tmp_path / "long.wav"
    wavfile.write(path, 22050, (_speech(3.5, rate=22050) * 32767).astype(np.int16))
    modality = MODALITIES["audio"]
    entries = modality.read_input(str(path), (320, 32, 1), data)
    assert entries["audio"].shape == (320, 32, 1)
    frames = int(entries["audio_mask"].sum())
    assert 200 < frames <= 3.5 * SR / HOP + 1  # all of it, nothing cut (3.5 s = 219 frames)
    np.testing.assert_array_equal(
        entries["audio"], modality.read_file(str(path), (320, 32, 1), data)
    )
    data.audio.padding = "centre"
    assert modality.read_input(str(path), (320, 32, 1), data).keys() == {"audio"}
    assert modality.in_memory(data)
    data.audio.in_memory = False
    assert not modality.in_memory(data)


def test_a_workdir_from_before_the_keys_resumes_with_them_at_their_defaults():
    current = {"task": "speech2text", "data": blocks.data("spoken_digits", "audio").to_dict()}
    old = json.loads(json.dumps(current))
    del old["data"]["audio"]["padding"], old["data"]["audio"]["in_memory"]
    filled = workdir.with_new_keys(old)
    assert filled["data"]["audio"]["padding"] == "centre" and filled["data"]["audio"]["in_memory"]
    assert workdir.config_diff(filled["data"], current["data"]) == []
