"""Can one host's CPUs feed its accelerators? Decoded examples/s of each real-size config's data
paths on this machine, with grain workers, against what one accelerator step consumes.

  python benchmarks/data_throughput.py [--configs=imagenet256,coco256_t2i] [--workers=0,2] \
      [--batch=32] [--warmup_batches=8] [--warmup_s=1] [--batches=4] [--window_s=1] \
      [--repeats=3] [--mfu=0.4] [--chips_per_host=8]

Paths, each through data/pipeline.make_train_iterator (shuffle, map, batch; grain workers via
mp_prefetch; with 0 workers the pipeline's 2 read threads still map in this process), measured as
`repeats` windows of >= `batches` batches and >= `window_s` seconds after a warm-up of >=
`warmup_batches` and >= `warmup_s` (worker start-up and the prefetch buffers filled while idle are
not timed); the median window is reported:
  pixels_mock  what the latent precompute reads: the config's TFDS source with
               data.tfds_mock_examples (tfds's own mock data: already-decoded images of random,
               small sizes, so no JPEG decode) -> centre crop to 256 -> the dataset's features;
  pixels_jpeg  the same source and code (tfds_sources.to_record, the features), but each image a
               JPEG of the dataset's typical size (ImageNet 500×375, COCO 640×480) decoded as
               tfds decodes an Image feature (OpenCV if installed, else PIL): the real cost;
  latents      what the generator trains on: ArrayRecord shards written with
               latent_shards.write_shard from random float16 32×32×4 latents (and their flips
               where the config flips), read by latent_shards.LatentFeatures; the bytes an
               example takes in the shards.
Captions: ImageNet's class ids (ClassTokenizer); COCO's through the tiny random:t5 part's
tokenizer (the real T5 sentencepiece model is not available here), cut to the config's 64 tokens.

What a step needs: the train step's FLOPs an example, 3 × the generator's forward (XLA's cost
analysis of the config's DiT, batch 1: forward + a backward of twice its cost; remat's recomputed
forward is not counted, as MFU does not count it) + the frozen text encoder's forward; then one
host of --chips_per_host chips at --mfu of a chip's peak consumes
chips × peak × MFU / FLOPs-an-example examples/s, whatever the host count, and runs the plan's
global batch in batch × FLOPs / (chips × peak × MFU) seconds on one host. The last line is one
JSON object.

Table columns: the median examples/s of the precompute's own reading loop (pixel paths only:
`serial`, one thread, no grain) and of the training iterator at each worker count; bytes an
example (the JPEG, or the shards'); what one host's chips need; and how many workers (cores) one
host would need for it, extrapolated linearly from one worker's rate at the largest worker count
here. This machine's CPU, its core count and its load average at the start and end go into the
JSON: on a shared machine the figures are noisy, the repeats show by how much.
"""

from __future__ import annotations

import functools
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scale_plan
from absl import app, flags
from PIL import Image

from crossmodal_jax.data import catalog, pipeline
from crossmodal_jax.data import latent_shards as store
from crossmodal_jax.data import text as text_lib
from crossmodal_jax.data.tfds_records import TFDS_DATASETS, to_record
from crossmodal_jax.data.tfds_sources import TfdsSource
from crossmodal_jax.stages import builders
from crossmodal_jax.stages.objectives import TOKENIZER_LATENTS
from crossmodal_jax.training import throughput

_CONFIGS = flags.DEFINE_list("configs", list(scale_plan.CONFIGS), "Configs of configs/.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "grain worker counts (0: in this process).")
_MEASURE_BATCH = flags.DEFINE_integer("batch", 32, "Batch of the measured iterators.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 8, "Batches read before timing.")
_WARMUP_S = flags.DEFINE_float("warmup_s", 1.0, "... and at least these seconds.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Batches a timed window, at least...")
_WINDOW_S = flags.DEFINE_float("window_s", 1.0, "... and at least these seconds.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows (the median is reported).")
_MOCK = flags.DEFINE_integer("mock_examples", 128, "tfds mock examples (and JPEG records).")
_LATENTS = flags.DEFINE_integer(
    "latent_examples", 4096, "Examples written to latent shards (4096 = one config-size shard)."
)
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the accelerators.")
_PER_HOST = flags.DEFINE_integer("chips_per_host", 8, "Accelerator chips a host feeds.")

# Peak dense bf16 TFLOP/s of one chip (vendor figures).
CHIPS = {"H100 SXM": 989.0, "TPU v5p": 459.0}
# Typical stored JPEG size (rows, columns): ILSVRC-2012's most common 500×375, COCO's 640×480.
JPEG_HW = {"imagenet2012": (375, 500), "coco_captions": (480, 640)}
COCO_WORDS = "a man woman dog cat sitting on top of the with red bus street table plate".split()


class JpegSource:
    """A TFDS source whose images are real-size JPEGs: each mock example keeps its label and
    captions, its image is replaced by a JPEG decoded as tfds decodes an Image feature, then the
    source's own record code (to_record: centre crop, resize) runs. Picklable for workers."""

    def __init__(self, source: TfdsSource, jpegs: list[bytes]):
        self.source, self.jpegs = source, jpegs

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        spec = TFDS_DATASETS[self.source.key]
        example = dict(self.source._inner[index])
        example[spec.media_key] = image_feature().decode_example_np(
            self.jpegs[index % len(self.jpegs)]
        )
        return to_record(spec, example, self.source.fmt, self.source.captions)


@functools.cache
def image_feature():
    """tfds's RGB Image feature: its decoder is the one a prepared dataset's images go through."""
    import tensorflow_datasets as tfds

    return tfds.features.Image(shape=(None, None, 3))


def synthetic_jpegs(hw: tuple[int, int], count: int, seed: int = 0) -> list[bytes]:
    """JPEGs (quality 90) of smooth random colour fields plus pixel noise (sigma 16): photo-like
    bytes for their size (ImageNet 500×375: ~90 KB), so decoding costs what a photo's does."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (hw[0] // 32, hw[1] // 32, 3), np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize(hw[::-1], Image.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 16, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def window(it, batch: int, min_batches: int, min_s: float) -> float:
    """Examples/s of reading at least `min_batches` batches for at least `min_s` seconds."""
    t0, n = time.perf_counter(), 0
    while n < min_batches or time.perf_counter() - t0 < min_s:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def rates(source, transform, workers: int) -> list[float]:
    """Examples/s of `repeats` timed windows of the training iterator after its warm-up. Each
    phase lasts at least its batch count and its seconds: a fast path's windows are then long
    enough to time, and the warm-up drains what the prefetch buffers filled during start-up."""
    batch = _MEASURE_BATCH.value
    it = pipeline.make_train_iterator(
        source, global_batch_size=batch, seed=0, transform=transform, worker_count=workers
    )
    window(it, batch, _WARMUP.value, _WARMUP_S.value)
    out = [window(it, batch, _BATCHES.value, _WINDOW_S.value) for _ in range(_REPEATS.value)]
    del it  # stops the workers
    return out


def serial_rates(source, transform) -> list[float]:
    """Examples/s of reading records one after another in this thread, as the latent precompute
    does (stages/latent_precompute._encode_shard: source[i] then features.map, no grain)."""
    out, i = [], 0
    for _ in range(_REPEATS.value):
        t0, n = time.perf_counter(), 0
        while n < _MEASURE_BATCH.value or time.perf_counter() - t0 < _WINDOW_S.value:
            transform.map(source[i % len(source)])
            n, i = n + 1, i + 1
        out.append(n / (time.perf_counter() - t0))
    return out


def summary(r: list[float], seconds: float) -> dict[str, Any]:
    return {
        "median": round(statistics.median(r), 1),
        "windows": [round(x, 1) for x in r],
        "seconds": round(seconds, 1),
    }


def caption_tokenizer(exp_text: Any, dataset: catalog.Dataset):
    """The caption tokenizer the config trains with, or its stand-in here (see the docstring)."""
    if isinstance(exp_text, text_lib.ClassTokenizer):
        return text_lib.ClassTokenizer(dataset.class_captions())
    from crossmodal_jax import pretrained
    from crossmodal_jax.pretrained.as_text import PretrainedText

    part = pretrained.load("random:t5")
    return PretrainedText(str(part.path), part.config)


def write_latents(folder: Path, config, text, count: int) -> tuple[Any, float]:
    """Shards of `count` random float16 latents as the precompute writes them; (source, bytes
    an example)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    side = config.data.image_size // scale_plan.VAE_DOWNSAMPLE
    shape = (side, side, scale_plan.VAE_CHANNELS)
    flip = bool(config.generator.latents.flip)
    size = int(config.generator.latents.shard_size)
    # Full shards: a shard's file has a fixed overhead (~128 KiB) that small ones would inflate.
    ranges = store.shard_ranges(count, min(size, count))
    names = [store.shard_name(k, len(ranges)) for k in range(len(ranges))]
    for name, (lo, hi) in zip(names, ranges, strict=True):
        records = []
        for i in range(lo, hi):
            record = {store.LATENT: rng.standard_normal(shape).astype(np.float16)}
            if flip:
                record[store.LATENT_FLIP] = rng.standard_normal(shape).astype(np.float16)
            record["label"] = np.int32(i % 1000)
            if isinstance(text, text_lib.ClassTokenizer):
                record["caption"] = text.classes[i % len(text.classes)]
            else:
                record["caption"] = " ".join(rng.choice(COCO_WORDS, 12))
            records.append(record)
        store.write_shard(folder, name, records)
    nbytes = sum(Path(p).stat().st_size for p in store.shard_paths(folder, len(names)))
    return store.open_shards(folder, len(names)), nbytes / count


def step_flops(exp) -> dict[str, float]:
    """Forward FLOPs of one example: the DiT (with its condition) and the frozen text encoder."""
    import flax.linen as nn

    dit = builders.build_dit(exp)
    inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in builders.example_inputs(exp, dit)]
    params = jax.eval_shape(lambda *a: nn.meta.unbox(dit.init(jax.random.key(0), *a)), *inputs)
    fwd = jax.jit(lambda v, *a: dit.apply(v, *a))
    out = {"dit": throughput.step_flops(fwd.lower(params, *inputs).compile())}
    if exp.text_encoder is not None:
        enc = exp.text_encoder.module
        ids = jax.ShapeDtypeStruct((1, exp.config.data.text_max_len), jnp.int32)
        enc_params = jax.eval_shape(lambda i: nn.meta.unbox(enc.init(jax.random.key(0), i, i)), ids)
        fwd = jax.jit(lambda v, i: enc.apply(v, i, i))
        out["text_encoder"] = throughput.step_flops(fwd.lower(enc_params, ids).compile())
    return out


def needs(flops: dict[str, float], batch: int) -> dict[str, Any]:
    """What one host's chips consume at the assumed MFU, per chip kind."""
    per_example = 3 * flops["dit"] + flops.get("text_encoder", 0.0)
    out: dict[str, Any] = {"train_gflop_per_example": round(per_example / 1e9, 1)}
    for chip, peak in CHIPS.items():
        host_flops = _PER_HOST.value * peak * 1e12 * _MFU.value
        out[chip] = {
            "examples_per_s_per_host": round(host_flops / per_example, 1),
            "step_s_one_host": round(batch * per_example / host_flops, 3),
        }
    return out


def measure(name: str, tmp: Path) -> dict[str, Any]:
    """The throughput row of one config: each path at each worker count, and its needs."""
    t0 = time.perf_counter()
    config = scale_plan.load_config(name)
    config.data.tfds_mock_examples = _MOCK.value
    exp, _ = scale_plan.plan_experiment(config)
    dataset = catalog.open_dataset(config.data)
    text = caption_tokenizer(exp.text, dataset)
    source = dataset.split("train")
    features = dataset.features(text)
    jpegs = synthetic_jpegs(JPEG_HW[config.data.tfds_name], min(_MOCK.value, 32))
    latents, shard_bytes = write_latents(tmp / name, config, text, _LATENTS.value)
    latent_features = store.LatentFeatures(TOKENIZER_LATENTS, config.data.text_max_len, text)
    paths = {
        "pixels_mock": (source, features),
        "pixels_jpeg": (JpegSource(source, jpegs), features),
        "latents": (latents, latent_features),
    }
    row: dict[str, Any] = {"config": name, "paths": {}, "setup_s": round(time.perf_counter() - t0)}
    for path, (src, transform) in paths.items():
        row["paths"][path] = {}
        if path != "latents":  # the precompute's own reading loop
            t1 = time.perf_counter()
            r = serial_rates(src, transform)
            row["paths"][path]["serial"] = summary(r, time.perf_counter() - t1)
        for workers in (int(w) for w in _WORKERS.value):
            t1 = time.perf_counter()
            r = rates(src, transform, workers)
            row["paths"][path][workers] = summary(r, time.perf_counter() - t1)
            print(f"{name} {path} workers={workers}: {statistics.median(r):.1f} examples/s")
    row["jpeg_bytes_mean"] = round(float(np.mean([len(j) for j in jpegs])))
    row["jpeg_hw"] = list(JPEG_HW[config.data.tfds_name])
    row["latent_bytes_per_example"] = round(shard_bytes, 1)
    row["latent_flip"] = bool(config.generator.latents.flip)
    t1 = time.perf_counter()
    flops = step_flops(exp)
    row["flops_s"] = round(time.perf_counter() - t1, 1)
    row["forward_gflop"] = {k: round(v / 1e9, 2) for k, v in flops.items()}
    row["batch"] = int(config.generator.train.batch_size)
    row["needs"] = needs(flops, row["batch"])
    return row


def workers_to_feed(row: dict[str, Any], path: str, chip: str) -> float:
    """Workers (cores) one host needs for `chip`'s demand, extrapolated linearly from the rate
    a worker reached here at the largest worker count measured (>= 1)."""
    most = max(int(w) for w in _WORKERS.value)
    per_worker = row["paths"][path][most]["median"] / max(most, 1)
    return row["needs"][chip]["examples_per_s_per_host"] / per_worker


def table(rows: list[dict]) -> str:
    workers = [int(w) for w in _WORKERS.value]
    head = " | ".join(f"{w} workers" for w in workers)
    chips = " | ".join(f"{c} host needs | workers for it" for c in CHIPS)
    lines = [
        f"| config | path | serial | {head} | bytes/example | {chips} |",
        "|---" * (4 + len(workers) + 2 * len(CHIPS)) + "|",
    ]
    for r in rows:
        size = {
            "pixels_mock": "-",
            "pixels_jpeg": f"{r['jpeg_bytes_mean']} (JPEG)",
            "latents": f"{r['latent_bytes_per_example']:.0f}",
        }
        for path, by_workers in r["paths"].items():
            serial = by_workers.get("serial", {}).get("median")
            got = " | ".join(f"{by_workers[w]['median']:.0f}" for w in workers)
            need = " | ".join(
                f"{r['needs'][c]['examples_per_s_per_host']:.0f} "
                f"| {workers_to_feed(r, path, c):.1f}"
                for c in CHIPS
            )
            serial = "-" if serial is None else f"{serial:.0f}"
            lines.append(f"| {r['config']} | {path} | {serial} | {got} | {size[path]} | {need} |")
    return "\n".join(lines)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv) -> None:
    del argv
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in _CONFIGS.value]
    print(table(rows))
    print(
        f"needs: {_PER_HOST.value} chips a host at MFU {_MFU.value:.0%} of "
        + ", ".join(f"{c} {p:.0f} TFLOP/s" for c, p in CHIPS.items())
    )
    out = {
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "batch": _MEASURE_BATCH.value,
        "mfu": _MFU.value,
        "chips_per_host": _PER_HOST.value,
        "peak_tflops": CHIPS,
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
