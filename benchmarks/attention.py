"""The attention kernels of models/attention.py side by side: forward + backward time and the
compiled program's temporary memory, on this machine.

  python benchmarks/attention.py [--repeats=20] [--long=4096]

Two shapes: DiT-S/2's (batch 8, 6 heads, 256 tokens, head dim 64: the shape of the attention
timed in the CPU-speed issue) and one long sequence (batch 1, 4 heads, --long tokens). Each
kernel's jitted `grad(sum(attention(q, k, v)))` runs alternately with the others (timing.py),
median of --repeats calls; memory is XLA's `memory_analysis().temp_size_in_bytes` of that
program (nothing is run for it). Kernels this platform cannot compile ("cudnn" off NVIDIA GPUs,
"splash" off TPUs) are listed under "not_run" with the error. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from timing import alternating_medians

from crossmodal_jax.models.attention import ATTENTION

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each kernel.")
_LONG = flags.DEFINE_integer("long", 4096, "Tokens of the long-sequence case.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q, k, v dtype.")


def case(batch: int, heads: int, tokens: int, head_dim: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    shape = (batch, tokens, heads, head_dim)
    dtype = jnp.dtype(_DTYPE.value)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
    calls, memory, skipped = {}, {}, {}
    for name, fn in ATTENTION.items():
        loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v, None).astype(jnp.float32))
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        try:
            compiled = grad.lower(q, k, v).compile()
        except Exception as e:  # noqa: BLE001  a kernel of another platform (cudnn, splash)
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        memory[name] = compiled.memory_analysis().temp_size_in_bytes
        calls[name] = lambda compiled=compiled: jax.block_until_ready(compiled(q, k, v))
    ms = alternating_medians(calls, repeats, warmup=2)
    return {
        "shape": dict(batch=batch, heads=heads, tokens=tokens, head_dim=head_dim),
        "ms": {name: round(t, 2) for name, t in ms.items()},
        "temp_mib": {name: round(b / 2**20, 1) for name, b in memory.items()},
        "speed_vs_xla": {name: round(ms["xla"] / t, 3) for name, t in ms.items()},
        "not_run": skipped,
    }


def main(argv) -> None:
    del argv
    load = os.getloadavg()[0]
    result = {
        "dtype": _DTYPE.value,
        "dit_s": case(8, 6, 256, 64, _REPEATS.value),
        "long": case(1, 4, _LONG.value, 64, max(3, _REPEATS.value // 4)),
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    for name in ("dit_s", "long"):
        r = result[name]
        print(
            f"{name} {r['shape']}: "
            + ", ".join(f"{k} {r['ms'][k]} ms / {r['temp_mib'][k]} MiB" for k in r["ms"])
        )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
