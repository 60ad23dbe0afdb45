"""Loading a large pretrained checkpoint: peak memory of one process, and the bytes each process
reads when two processes load it onto one mesh (every process reads only its devices' slices).

  python benchmarks/pretrained_load.py [--folder=/tmp/t5_large_random] [--processes=2]

Makes (once, in --folder) a random-weight T5 v1.1-large-shaped encoder in the transformers layout
(config.json + model.safetensors, float32: 341 M parameters, 1.37 GB; torch and transformers, the
`bench` extra, are used only to name and shape the tensors, on the meta device). Then, each in a
fresh process:
- `single`: `pretrained.load(folder)` on one device; peak resident memory (VmHWM) in all and
  above the process's resident memory once jax and the package are imported (the baseline);
- `sharded`: --processes processes x 4 CPU devices (jax.distributed on 127.0.0.1), the mesh
  fsdp = 4 x processes; `pretrained.load(folder, mesh=...)`; each process's bytes read (the
  stored bytes of the slices it read) over the checkpoint's bytes.
The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from absl import app, flags

_FOLDER = flags.DEFINE_string("folder", "/tmp/t5_large_random", "Where the checkpoint is made.")
_PROCESSES = flags.DEFINE_integer("processes", 2, "Processes of the sharded load.")
_CHILD = flags.DEFINE_string("child", "", "Internal: single | sharded:<id>:<n>:<port>.")

# T5 v1.1 large's encoder (google/t5-v1_1-large), 24 layers.
T5_LARGE = dict(
    vocab_size=32128,
    d_model=1024,
    d_kv=64,
    d_ff=2816,
    num_layers=24,
    num_heads=16,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


def make_checkpoint(folder: str) -> None:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    config = transformers.T5Config(**T5_LARGE)
    with torch.device("meta"):
        model = transformers.T5EncoderModel(config)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "encoder.embed_tokens.weight":  # tied to shared.weight: stored once
            continue
        tensors[name] = rng.standard_normal(tuple(t.shape), dtype=np.float32) * 0.02
    os.makedirs(folder, exist_ok=True)
    config.architectures = ["T5EncoderModel"]
    config.to_json_file(os.path.join(folder, "config.json"))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _resident() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def child(spec: str, folder: str) -> dict:
    if spec.startswith("sharded"):
        _, pid, n, port = spec.split(":")
        import jax

        jax.config.update("jax_num_cpu_devices", 4)
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(n), process_id=int(pid))
    import jax

    from crossmodal_jax import pretrained
    from crossmodal_jax.training.sharding import make_mesh

    mesh = make_mesh({"data": 1, "fsdp": -1}) if spec.startswith("sharded") else None
    baseline = _resident()["VmRSS"]
    t0 = time.perf_counter()
    part = pretrained.load(folder, mesh=mesh)
    jax.block_until_ready(part.params)
    seconds = time.perf_counter() - t0
    return {
        "process": jax.process_index(),
        "seconds": round(seconds, 2),
        "checkpoint_bytes": part.nbytes,
        "bytes_read": part.bytes_read,
        "read_fraction": round(part.bytes_read / part.nbytes, 4),
        "peak_rss_bytes": _resident()["VmHWM"],
        "baseline_rss_bytes": baseline,
    }


def _run_children(specs: list[str], folder: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, f"--child={s}", f"--folder={folder}"],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for s in specs
    ]
    rows = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a child process failed (exit {p.returncode})")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main(argv) -> None:
    del argv
    folder = _FOLDER.value
    if _CHILD.value:
        print(json.dumps(child(_CHILD.value, folder)))
        return
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        print(f"making {folder} ...", flush=True)
        make_checkpoint(folder)
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    (single,) = _run_children(["single"], folder)
    growth = single["peak_rss_bytes"] - single["baseline_rss_bytes"]
    print(
        f"single process: {single['seconds']} s; peak RSS {single['peak_rss_bytes'] / 1e9:.2f} GB "
        f"in all, {growth / 1e9:.2f} GB above the {single['baseline_rss_bytes'] / 1e9:.2f} GB "
        f"after imports ({growth / size:.2f}x the {size / 1e9:.2f} GB file)"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = _PROCESSES.value
    rows = _run_children([f"sharded:{i}:{n}:{port}" for i in range(n)], folder)
    for r in rows:
        print(
            f"process {r['process']} of {n} (mesh fsdp={4 * n}): read {r['bytes_read'] / 1e9:.2f} "
            f"GB of {r['checkpoint_bytes'] / 1e9:.2f} GB ({100 * r['read_fraction']:.1f} %), "
            f"{r['seconds']} s"
        )
    print(
        json.dumps(
            {
                "file_bytes": size,
                "single_seconds": single["seconds"],
                "single_peak_rss_bytes": single["peak_rss_bytes"],
                "single_rss_growth_over_file": round(growth / size, 3),
                "single_peak_rss_over_file": round(single["peak_rss_bytes"] / size, 3),
                "processes": n,
                "max_read_fraction": max(r["read_fraction"] for r in rows),
                "sharded_seconds": max(r["seconds"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
