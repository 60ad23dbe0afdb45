"""Can one host's CPUs feed configs/librispeech_s2t.py's tokenizer? Examples/s of its audio feature
path (trim, loudness, pad to 35.2 s at the end, 80-band log-mel, mask) on this machine with grain
workers, the bytes an example takes, against what an accelerator's tokenizer step consumes; with
--data_dir, the prepared dataset's clip and transcript lengths instead.

  python benchmarks/librispeech_data.py [--workers=0,1,2] [--seconds=12.69] [--batch=16] \
      [--warmup_batches=8] [--batches=16] [--repeats=3] [--mfu=0.4]
  python benchmarks/librispeech_data.py --data_dir=~/tensorflow_datasets [--split=train] \
      [--limit=0] [--mock_examples=0]

Throughput: synthetic int16 clips of --seconds (12.69 s: train_clean100's mean, 100.6 h over
28,539 utterances) of a voiced, never-silent signal (so trimming keeps them whole: feature cost
grows with the sound's length), through the config's own AudioTextFeatures and
data/pipeline.make_train_iterator (grain workers via mp_prefetch); `repeats` windows of `batches`
batches after `warmup_batches`, the median reported. The FLAC decode of a prepared TFDS split is
not in it (no LibriSpeech here). Per-clip cost at several lengths, in this process, beside it.

What a step needs: the tokenizer's train step is ~3 forward passes; its forward FLOPs an example
come from XLA's cost analysis of the config's VQ-VAE at batch 1 (compiled here, on the CPU). One
accelerator at --mfu of --peak_tflops then consumes peak x MFU / (3 x FLOPs) examples/s: that many
over what a core gives here (the best host rate over its core count) is the cores it takes. The
generator's step FLOPs (its TokenDiT, the same way) are printed too: it reads precomputed codes.

Lengths (--data_dir): every clip (or the first --limit) of a split of the prepared dataset read
through the config's TFDS source (decoded by tfds): seconds, transcript UTF-8 bytes, and how many
exceed the config's 35.2 s and 639 bytes. --mock_examples=N reads tfds's mock data instead (a
check of this code, not of LibriSpeech). The last line is one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from crossmodal_jax.data import audio, padded_audio, pipeline, tfds_sources
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.models.vqvae import vqvae_from_config
from crossmodal_jax.training import throughput

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts (0: this process).")
_SECONDS = flags.DEFINE_float("seconds", 12.69, "Length of the synthetic clips.")
_BATCH = flags.DEFINE_integer("batch", 16, "Batch of the measured iterators.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 8, "Batches read before timing.")
# Longer than the prefetch buffers, so a window times the workers, not what they buffered.
_BATCHES = flags.DEFINE_integer("batches", 16, "Batches a timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows (the median is reported).")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the accelerator.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Accelerator peak (H100 SXM dense bf16: 989).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared TFDS data directory: lengths mode.")
_SPLIT = flags.DEFINE_string("split", "train", "Lengths mode: 'train' or 'test' (the config's).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Lengths mode: first N clips (0 = all).")
_MOCK = flags.DEFINE_integer("mock_examples", 0, "Lengths mode: tfds mock examples instead.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = audio.SAMPLE_RATE


def librispeech_config(arg: str | None = None):
    path = os.path.join(ROOT, "configs", "librispeech_s2t.py")
    spec = importlib.util.spec_from_file_location("librispeech_s2t", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def voiced_clip(seconds: float, seed: int) -> np.ndarray:
    """int16 16 kHz: a harmonic tone with a wobbling pitch and a little noise, loud throughout."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * (2 + seed % 3) * t)
    wave = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 8))
    wave = 0.15 * wave + 0.01 * rng.standard_normal(t.shape)
    return (np.clip(wave, -1, 1) * 32767).astype(np.int16)


def rates(source, transform, workers: int) -> list[float]:
    """Examples/s of `repeats` timed windows of the training iterator after its warm-up."""
    it = pipeline.make_train_iterator(
        source, global_batch_size=_BATCH.value, seed=0, transform=transform, worker_count=workers
    )
    for _ in range(_WARMUP.value):
        next(it)
    out = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        for _ in range(_BATCHES.value):
            next(it)
        out.append(_BATCHES.value * _BATCH.value / (time.perf_counter() - t0))
    del it  # stops the workers
    return out


def tokenizer_forward_flops(config, input_shape) -> float:
    """XLA's FLOPs of the config's VQ-VAE forward pass on one example."""
    import flax.linen as nn

    model = vqvae_from_config(config.tokenizer.model, in_channels=1, spatial_dims=2)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    params = jax.eval_shape(
        lambda x: nn.meta.unbox(model.init({"params": jax.random.key(0)}, x, train=False)), x
    )
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    return throughput.step_flops(fwd.lower(params, x).compile())


def generator_forward_flops(config) -> float:
    """XLA's FLOPs of the config's TokenDiT forward pass on one example (its codes as vectors)."""
    import flax.linen as nn

    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages import builders

    exp = local_experiment(config)  # the dataset is not opened: nothing prepared is needed
    dit = builders.build_token_dit(exp)
    inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in builders.example_inputs(exp, dit)]
    params = jax.eval_shape(lambda *a: nn.meta.unbox(dit.init(jax.random.key(0), *a)), *inputs)
    fwd = jax.jit(lambda v, *a: dit.apply(v, *a))
    return throughput.step_flops(fwd.lower(params, *inputs).compile())


def throughput_rows() -> dict:
    config = librispeech_config()
    features = MODALITIES["audio"].features(config.data, None, text_lib.TextTokenizer())
    frames, mels, _ = features.feature_shape
    caption = b"a transcript of one hundred and eighty bytes " * 4
    source = [{"audio": voiced_clip(_SECONDS.value, i), "caption": caption} for i in range(32)]
    out = features.map(source[0])
    valid = int(out[padded_audio.mask_key("audio")].sum())
    per_clip = {}  # the fastest of 7 (a shared machine's load only ever adds)
    for seconds in (5.0, 12.69, 24.5, 35.0):
        clip = {"audio": voiced_clip(seconds, 0), "caption": caption}
        times = []
        for _ in range(8):
            t0 = time.perf_counter()
            features.map(clip)
            times.append(time.perf_counter() - t0)
        per_clip[f"{seconds:g}s"] = round(min(times[1:]) * 1000, 1)
    measured = {}
    for w in (int(w) for w in _WORKERS.value):
        measured[str(w)] = statistics.median(rates(source, features, w))
        print(f"workers={w}: {measured[str(w)]:.1f} examples/s", flush=True)
    flops = 3 * tokenizer_forward_flops(config, features.feature_shape)
    need = _PEAK.value * 1e12 * _MFU.value / flops
    record_bytes = 2 * int(_SECONDS.value * SR)
    example_bytes = sum(np.asarray(v).nbytes for v in out.values())
    # The host's best rate over its cores (grain reads with 2 threads a process, and NumPy's FFT
    # releases the GIL, so even 0 workers can use 2 cores): what one core gives.
    per_core = max(measured.values()) / os.cpu_count()
    return {
        "clip_seconds": _SECONDS.value,
        "frames_with_sound": valid,
        "frames": frames,
        "mels": mels,
        "ms_per_clip_by_length": per_clip,
        "examples_per_sec_by_workers": {k: round(v, 1) for k, v in measured.items()},
        "record_bytes": record_bytes,
        "example_bytes": example_bytes,
        "tokenizer_batch": config.tokenizer.train.batch_size,
        "tokenizer_step_gflops_per_example": round(flops / 1e9, 2),
        "accelerator_examples_per_sec": round(need, 1),
        # The generator reads precomputed code ids, not audio: its step cost, for the docs.
        "generator_step_gflops_per_example": round(3 * generator_forward_flops(config) / 1e9, 2),
        "examples_per_sec_per_core": round(per_core, 1),
        "cores_for_one_accelerator": round(need / per_core, 1),
        "mfu": _MFU.value,
        "peak_tflops": _PEAK.value,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }


def percentiles(values: np.ndarray, digits: int) -> dict[str, float]:
    """The median, 90th, 99th percentile and maximum."""
    q = (50, 90, 99, 100)
    return {str(p): round(float(np.percentile(values, p)), digits) for p in q}


def length_rows() -> dict:
    config = librispeech_config()
    config.data.data_dir = os.path.expanduser(_DATA_DIR.value)
    config.data.tfds_mock_examples = _MOCK.value
    source = tfds_sources.get_source(config.data, _SPLIT.value)
    n = min(_LIMIT.value or len(source), len(source))
    seconds, nbytes = np.zeros(n), np.zeros(n, np.int64)
    for i in range(n):
        record = source[i]
        seconds[i] = len(record["audio"]) / SR
        nbytes[i] = len(record["caption"])
    return {
        "split": source.split,
        "clips": n,
        "seconds_percentiles": percentiles(seconds, 3),
        "bytes_percentiles": percentiles(nbytes, 1),
        "longer_than_num_samples": int(np.sum(seconds * SR > config.data.audio.num_samples)),
        "transcripts_cut": int(np.sum(nbytes > config.data.text_max_len - 1)),
    }


def main(argv) -> None:
    del argv
    row = length_rows() if (_DATA_DIR.value or _MOCK.value) else throughput_rows()
    print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
