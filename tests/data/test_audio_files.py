"""audio.py maths (resampling, trimming, log-mel) and files.py readers on good and broken inputs."""

import sys
import wave

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from crossmodal_jax.data import audio, features, files
from crossmodal_jax.errors import UserError

SR = audio.SAMPLE_RATE


def _sine(freq, seconds, sr=SR, amp=1.0):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1.0 / sr)[int(np.argmax(spectrum))]


# --- audio maths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sr_from,sr_to", [(22050, 16000), (8000, 16000), (44100, 16000)])
def test_resample_keeps_frequency_and_duration(sr_from, sr_to):
    x = _sine(440.0, 1.0, sr_from)
    y = audio.resample(x, sr_from, sr_to)
    assert y.dtype == np.float32 and abs(len(y) - sr_to) <= 1
    assert abs(_peak_hz(y, sr_to) - 440.0) <= 1.0
    np.testing.assert_allclose(np.sqrt(np.mean(y[100:-100] ** 2)), np.sqrt(0.5), rtol=0.02)


def test_fit_length_centres():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(audio.fit_length(x, 9), [0, 0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(audio.fit_length(x, 3), [2, 3, 4])
    assert audio.fit_length(x, 5).tolist() == x.tolist()


@pytest.mark.parametrize("n,frames", [(49152, 192), (16000, 62), (256, 1), (100, 1), (1000, 3)])
def test_log_mel_shape_follows_frames_formula(n, frames):
    assert audio.num_frames(n) == frames == max(1, n // 256)
    mel = audio.log_mel_spectrogram(np.zeros(n, np.float32))
    assert mel.shape == (frames, 32) and mel.dtype == np.float32
    assert (mel == audio.FLOOR_DB).all()  # silence sits on the floor
    assert (audio.normalize_log_mel(mel) == -1.0).all()


def test_pure_tone_peaks_in_its_mel_band_at_about_zero_db():
    centres = audio.mel_center_frequencies(32, 20.0, 8000.0)
    for k in (3, 10, 20, 28):
        mel = audio.log_mel_spectrogram(_sine(centres[k], 0.5))
        band = mel[2:-2].mean(axis=0)  # inner frames: no edge padding
        assert int(np.argmax(band)) == k
        assert -3.0 < band[k] < 1.0  # full-scale sine ~ 0 dB
        assert audio.normalize_log_mel(band).max() <= 1.0


def test_filterbank_is_triangular_with_unit_peaks():
    fb = audio.mel_filterbank(32, 512, SR, 20.0, 8000.0)
    assert fb.shape == (257, 32) and fb.min() >= 0.0 and fb.max() <= 1.0
    assert (fb.max(axis=0) > 0.5).all()  # every filter sees at least one bin


def test_trim_silence_cuts_noise_at_20db_snr():
    rng = np.random.default_rng(0)
    speech = _sine(300.0, 0.6, amp=0.3) * np.hanning(int(0.6 * SR)).astype(np.float32)
    clip = np.concatenate([np.zeros(SR // 2), speech, np.zeros(SR)]).astype(np.float32)
    power = np.mean(speech**2)
    for snr_db in (20.0, 40.0):
        noisy = clip + rng.standard_normal(len(clip)) * np.sqrt(power / 10 ** (snr_db / 10))
        trimmed = audio.trim_silence(noisy.astype(np.float32))
        # Keeps (nearly) the whole burst, drops most of the 1.5 s of noise.
        assert 0.45 * SR < len(trimmed) < 0.85 * SR, (snr_db, len(trimmed) / SR)
    # A clip that is all sound is left (nearly) whole; digital silence is returned unchanged.
    tone = _sine(500.0, 1.0, amp=0.5)
    assert len(audio.trim_silence(tone)) >= 0.95 * SR
    assert len(audio.trim_silence(np.zeros(SR, np.float32))) == SR


def test_audio_features_are_gain_and_rate_invariant():
    rng = np.random.default_rng(1)
    x = (_sine(700.0, 0.8, amp=0.2) + 0.01 * rng.standard_normal(int(0.8 * SR))).astype(np.float32)
    feats = features.audio_features(x, SR)
    assert feats.shape == (192, 32, 1) and feats.min() >= -1.0 and feats.max() <= 1.0
    quiet = features.audio_features(0.1 * x, SR)
    np.testing.assert_allclose(quiet, feats, atol=1e-4)
    resampled = features.audio_features(audio.resample(x, SR, 22050), 22050)
    assert np.abs(resampled - feats).mean() < 0.02


# --- file readers ---------------------------------------------------------------------------------


def _assert_one_line_naming(excinfo, path):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError) and isinstance(excinfo.value, ValueError)
    assert "\n" not in message and str(path) in message, message


def test_read_image_good_and_bad(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, 15:] = 255
    good = tmp_path / "good.png"
    Image.fromarray(rgb).save(good)
    gray = files.read_image(good, (8, 8), 1)
    assert gray.shape == (8, 8, 1) and gray.dtype == np.uint8
    assert gray[:, :3].max() == 0 and gray[:, -3:].min() == 255
    assert files.read_image(good, (16, 12), 3).shape == (16, 12, 3)

    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for bad in (truncated, not_image, tmp_path / "missing.png"):
        with pytest.raises(files.InputFileError) as excinfo:
            files.read_image(bad, (8, 8), 1)
        _assert_one_line_naming(excinfo, bad)


@pytest.mark.parametrize(
    "dtype,scale,offset", [(np.int16, 32767, 0), (np.int32, 2**31 - 1, 0), (np.uint8, 127, 128)]
)
def test_read_wav_pcm_types_and_stereo(tmp_path, dtype, scale, offset):
    x = _sine(440.0, 0.25, 22050, amp=0.5)
    stereo = np.stack([x, x], axis=1)
    path = tmp_path / "x.wav"
    wavfile.write(path, 22050, (np.rint(stereo * scale) + offset).astype(dtype))
    y, sr = files.read_wav(path)
    assert sr == 22050 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=2.0 / scale)


def test_read_wav_float_and_bad_files(tmp_path):
    x = _sine(440.0, 0.1, amp=0.5)
    path = tmp_path / "f.wav"
    wavfile.write(path, SR, x)
    y, sr = files.read_wav(path)
    assert sr == SR
    np.testing.assert_array_equal(y, x)

    text = tmp_path / "text.wav"
    text.write_text("this is not audio\n")
    truncated = tmp_path / "truncated.wav"
    with wave.open(str(truncated), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes((x * 30000).astype(np.int16).tobytes())
    truncated.write_bytes(truncated.read_bytes()[:30])
    for bad in (text, truncated, tmp_path / "missing.wav"):
        with pytest.raises(files.InputFileError) as excinfo:
            files.read_wav(bad)
        _assert_one_line_naming(excinfo, bad)


def test_read_video_gif_and_npy(tmp_path):
    frames = [np.full((20, 20), 40 * i, np.uint8) for i in range(3)]
    gif = tmp_path / "v.gif"
    Image.fromarray(frames[0]).save(
        gif, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]]
    )
    video = files.read_video(gif, 8, (32, 32), 1)
    assert video.shape == (8, 32, 32, 1) and video.dtype == np.uint8
    means = video.reshape(8, -1).mean(axis=1)
    np.testing.assert_allclose(means, [0, 40, 80, 80, 80, 80, 80, 80], atol=2)  # last one repeats

    long = np.stack([np.full((16, 16), i, np.uint8) for i in range(12)])
    npy = tmp_path / "v.npy"
    np.save(npy, long)
    video = files.read_video(npy, 8, (32, 32), 1)
    assert video.shape == (8, 32, 32, 1)
    assert video[:, 0, 0, 0].tolist() == list(range(2, 10))  # centre 8 of 12
    np.save(tmp_path / "c.npy", np.zeros((4, 10, 10, 3), np.uint8))
    assert files.read_video(tmp_path / "c.npy", 4, (8, 8), 1).shape == (4, 8, 8, 1)


def test_read_video_bad_files(tmp_path):
    cases = {
        "float.npy": np.zeros((8, 32, 32), np.float32),
        "flat.npy": np.zeros((32, 32), np.uint8),
        "five.npy": np.zeros((2, 8, 32, 32, 1), np.uint8),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.gif").write_text("GIF? no")
    (tmp_path / "movie.mp4").write_bytes(b"\0" * 16)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.zeros((8, 32, 32), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:200])
    names = [*cases, "object.npy", "text.gif", "movie.mp4", "truncated.npy", "missing.npy"]
    for name in names:
        with pytest.raises(files.InputFileError) as excinfo:
            files.read_video(tmp_path / name, 8, (32, 32), 1)
        _assert_one_line_naming(excinfo, tmp_path / name)
    with pytest.raises(files.InputFileError, match="float32"):
        files.read_video(tmp_path / "float.npy", 8, (32, 32), 1)


def test_list_inputs(tmp_path):
    for name in ("b.png", "a.PNG", "c.txt", "10.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in files.list_inputs(tmp_path, [".png"])] == ["10.png", "a.PNG", "b.png"]
    for folder, suffixes in ((tmp_path / "nope", [".png"]), (tmp_path, [".wav"])):
        with pytest.raises(files.InputFileError) as excinfo:
            files.list_inputs(folder, suffixes)
        _assert_one_line_naming(excinfo, folder)


def _write_mp4(path, frames_TxHxW):
    """An H.264 MP4 of grayscale frames, encoded with PyAV (the reader's library)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = frames_TxHxW.shape[2], frames_TxHxW.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}  # lossless luma: pixel values survive the round trip
        for frame in frames_TxHxW:
            rgb = np.repeat(frame[..., None], 3, axis=-1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def test_read_video_mp4(tmp_path):
    pytest.importorskip("av")
    clip = np.stack([np.full((32, 32), 20 + 20 * i, np.uint8) for i in range(10)])
    clip[:, 8:16, 8:16] = 250  # a bright square in every frame
    _write_mp4(tmp_path / "v.mp4", clip)
    video = files.read_video(tmp_path / "v.mp4", 8, (16, 16), 1)
    assert video.shape == (8, 16, 16, 1) and video.dtype == np.uint8
    # The centre 8 of 10 frames, brightness kept (within the codec's colour conversion).
    np.testing.assert_allclose(video[:, 0, 0, 0], 20 + 20 * np.arange(1, 9), atol=3)
    assert (video[:, 4:8, 4:8] > 240).all()
    # The folder source lists and decodes .mp4 clips like the other video files.
    from crossmodal_jax.data import folders

    (tmp_path / "train").mkdir()
    (tmp_path / "v.mp4").rename(tmp_path / "train" / "v.mp4")
    (tmp_path / "train" / folders.CAPTIONS).write_text('{"file": "v.mp4", "text": "a clip"}\n')
    fmt = folders.FolderFormat("video", image_size=16, channels=1, frames=8, text_max_len=40)
    (record,) = folders.load_split(tmp_path, "train", fmt)
    np.testing.assert_array_equal(record["video"], video)
    (tmp_path / "bad.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
    with pytest.raises(files.InputFileError) as excinfo:
        files.read_video(tmp_path / "bad.mp4", 8, (16, 16), 1)
    _assert_one_line_naming(excinfo, tmp_path / "bad.mp4")


def test_mp4_without_pyav_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    (tmp_path / "v.mp4").write_bytes(b"\0" * 16)
    with pytest.raises(files.InputFileError, match=r"v\.mp4: reading \.mp4 needs PyAV"):
        files.read_video(tmp_path / "v.mp4", 8, (16, 16), 1)
