"""The latent precompute stage at real size on this machine: SD-VAE encodes of 256×256 images (and
their flips) per second, and the bytes an example takes in the shards (generator.latents;
stages/latent_precompute.py).

  python benchmarks/latent_precompute.py [--batch=8] [--repeats=3] [--size=256]

The SD-VAE's architecture with random weights (`random:sd-vae`: the speed does not depend on the
values; writing it once needs torch and diffusers) encodes TFDS's mock ImageNet through
configs/imagenet256.py's own data path (centre crop, features) and the stage's own encoder (jitted
over this process's devices, flips in the same call). The time of one encoder call is the median of
`repeats` after a warm-up call (compilation excluded); the compile time is reported apart. Bytes an
example: the msgpack record (latent + flip, float16, label, caption) and a written shard of 256
such records divided by 256 (ArrayRecord's per-record overhead included). The last line is one
JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 8, "Images per encoder call (generator.latents.batch_size).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed encoder calls after the warm-up.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side (the VAE downsamples 8×).")

ROOT = Path(__file__).resolve().parents[1]


def _config():
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / "imagenet256.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.tokenizer_from = "random:sd-vae"
    config.data.update(tfds_mock_examples=_BATCH.value, image_size=_SIZE.value, worker_count=0)
    config.generator.latents.batch_size = _BATCH.value
    return config


def main(argv) -> None:
    del argv
    sys.path.insert(0, str(ROOT))
    import jax
    from flax import serialization

    from crossmodal_jax.data import latent_shards as store
    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages import latent_precompute
    from crossmodal_jax.stages.tokenizer import tokenizer_variables

    with tempfile.TemporaryDirectory() as tmp:
        config = _config()
        exp = local_experiment(config, os.path.join(tmp, "run"))
        tok_host = latent_precompute.host_tree(tokenizer_variables(exp))
        encode, size = latent_precompute.encoder(exp, tok_host, flip=True)
        source = exp.dataset.split("train")
        raw = [source[i] for i in range(size)]
        images = np.stack([exp.features.map(r)["image"] for r in raw])
        t0 = time.perf_counter()
        z, _ = encode(images)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(_REPEATS.value):
            t0 = time.perf_counter()
            encode(images)
            times.append(time.perf_counter() - t0)
        call_s = float(np.median(times))
        records = latent_precompute.encode_shard(exp, encode, size, source, 0, size, np.float16)
        record_bytes = len(serialization.msgpack_serialize(records[0]))
        folder = Path(tmp) / "shard"
        folder.mkdir()
        store.write_shard(folder, "s", [records[i % size] for i in range(256)])
        file_bytes = os.path.getsize(folder / "s.array_record") / 256
    row = {
        "image_size": _SIZE.value,
        "latent_shape": list(z.shape[1:]),
        "batch": size,
        "devices": jax.local_device_count(),
        "cpu_count": os.cpu_count(),
        "compile_s": round(compile_s, 1),
        "encode_call_s_median": round(call_s, 3),
        "examples_per_s": round(size / call_s, 3),  # each with its flip: 2 encodes
        "record_bytes": record_bytes,
        "shard_bytes_per_example": round(file_bytes, 1),
        "imagenet_train_hours_one_host": round(1_281_167 / (size / call_s) / 3600, 1),
    }
    print(
        f"SD-VAE encode at {_SIZE.value}² with flips: {row['examples_per_s']} examples/s "
        f"({size} a call, median of {_REPEATS.value}; compile {row['compile_s']} s); "
        f"{record_bytes} bytes a record, {row['shard_bytes_per_example']} in a shard"
    )
    print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
