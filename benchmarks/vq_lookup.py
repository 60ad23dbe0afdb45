"""Quantizer training step (lookup + EMA update + dead-code restart): ours vs vector-quantize-pytorch.

  pip install -e .[bench]      # torch==2.13.0 (CPU) + vector-quantize-pytorch
  python benchmarks/vq_lookup.py [--n=4096] [--k=1024] [--d=64] [--repeats=20] [--chunk=0]

Both sides quantize the same N x D float32 batch against a K-code EMA codebook in training mode
(decay 0.99, dead-code restart on), on the same CPU, alternating one timed call of each per repeat
(compile / warm-up excluded). Ours is one jit-compiled `VectorQuantizer.apply(train=True)`; theirs
is `VectorQuantize(dim=D, codebook_size=K, decay=0.99, threshold_ema_dead_code=...)` in train().
Prints both medians and the speed ratio; the last line is one JSON object.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from timing import alternating_medians, environment

from crossmodal_jax.models.vq import VectorQuantizer

_N = flags.DEFINE_integer("n", 4096, "Vectors per batch.")
_K = flags.DEFINE_integer("k", 1024, "Codebook size.")
_D = flags.DEFINE_integer("d", 64, "Code dimension.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each implementation.")
_CHUNK = flags.DEFINE_integer("chunk", 0, "Our lookup_chunk_size (0 = unchunked).")
_THRESHOLD = flags.DEFINE_float("threshold", 1.0, "Dead-code threshold (EMA cluster size).")


def ours(n: int, k: int, d: int, chunk: int, threshold: float, z_np: np.ndarray):
    """A zero-argument callable running one jitted training-mode quantizer step (blocking)."""
    vq = VectorQuantizer(
        num_codes=k, code_dim=d, decay=0.99, dead_code_threshold=threshold, lookup_chunk_size=chunk
    )
    z = jnp.asarray(z_np)
    variables = nn.meta.unbox(jax.jit(lambda z_: vq.init(jax.random.key(0), z_, train=False))(z))

    @jax.jit
    def step(stats, z_, key):
        (z_q, aux), new = vq.apply(
            {"vq_stats": stats}, z_, train=True, mutable=["vq_stats"], rngs={"vq": key}
        )
        return z_q, new["vq_stats"], aux["indices"]

    state = {"stats": variables["vq_stats"], "i": 0}

    def call():
        state["i"] += 1
        out = step(state["stats"], z, jax.random.key(state["i"]))
        state["stats"] = out[1]
        jax.block_until_ready(out)

    return call


def theirs(n: int, k: int, d: int, threshold: float, z_np: np.ndarray):
    import torch
    from vector_quantize_pytorch import VectorQuantize

    vq = VectorQuantize(dim=d, codebook_size=k, decay=0.99, threshold_ema_dead_code=threshold)
    vq.train()
    x = torch.from_numpy(z_np)[None]  # [1, N, D]

    def call():
        with torch.no_grad():  # no backward on our side either; the EMA update runs regardless
            vq(x)

    return call


def main(argv) -> None:
    del argv
    n, k, d = _N.value, _K.value, _D.value
    z_np = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    fns = {
        "ours": ours(n, k, d, _CHUNK.value, _THRESHOLD.value, z_np),
        "vector_quantize_pytorch": theirs(n, k, d, _THRESHOLD.value, z_np),
    }
    ms = alternating_medians(fns, _REPEATS.value)
    ratio = ms["vector_quantize_pytorch"] / ms["ours"]
    for name, v in ms.items():
        print(f"{name:>24}: {v:8.2f} ms/step (median of {_REPEATS.value})")
    print(f"speed ratio (theirs / ours): {ratio:.2f}x")
    print(
        json.dumps(
            {
                "n": n,
                "k": k,
                "d": d,
                "chunk": _CHUNK.value,
                "ours_ms": round(ms["ours"], 3),
                "vector_quantize_pytorch_ms": round(ms["vector_quantize_pytorch"], 3),
                "speedup": round(ratio, 3),
                **environment(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
