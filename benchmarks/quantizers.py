"""Every quantizer of the family against its vector-quantize-pytorch counterpart, training mode.

  pip install -e .[bench]      # torch (CPU) + vector-quantize-pytorch
  python benchmarks/quantizers.py [--n=4096] [--repeats=20] [--cases=fsq,lfq,rvq,vq_rotation]

One timed call is a training-mode forward and backward on the same N float32 vectors: the
quantizer's output is dotted with a fixed random tensor, its auxiliary loss added, and the
gradient taken with respect to the input (EMA codebooks update and restart dead codes as in
training). Ours is one jit-compiled function per case; theirs runs in torch's eager mode, as its
users run it. Same CPU, alternating one call of each per repeat (compile / warm-up excluded).
Cases (same dims on both sides):
  fsq          FSQ levels (8, 5, 5, 5) on 4-dim inputs          vs FSQ
  lfq          LFQ, 10 bits (1024 codes), entropy + commitment  vs LFQ
  rvq          4 residual stages of 256-code EMA VQ, dim 16     vs ResidualVQ
  vq_rotation  EMA VQ, 1024 codes of dim 64, rotation trick     vs VectorQuantize(rotation_trick)
Prints both medians and the speed ratio per case; the last line is one JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from timing import alternating_medians, environment

from crossmodal_jax.models.fsq import FiniteScalarQuantizer
from crossmodal_jax.models.lfq import LookupFreeQuantizer
from crossmodal_jax.models.rvq import ResidualQuantizer
from crossmodal_jax.models.vq import VectorQuantizer

_N = flags.DEFINE_integer("n", 4096, "Vectors per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each implementation per case.")
_CASES = flags.DEFINE_list("cases", ["fsq", "lfq", "rvq", "vq_rotation"], "Which pairs to time.")

LEVELS = (8, 5, 5, 5)


def _ours_module(case: str) -> tuple[nn.Module, int]:
    if case == "fsq":
        return FiniteScalarQuantizer(levels=LEVELS, code_dim=len(LEVELS)), len(LEVELS)
    if case == "lfq":
        return LookupFreeQuantizer(code_dim=10, entropy_weight=0.1, commitment_cost=0.25), 10
    if case == "rvq":
        stage = VectorQuantizer(num_codes=256, code_dim=16, decay=0.99, dead_code_threshold=1.0)
        return ResidualQuantizer(stage=stage, num_stages=4), 16
    vq = VectorQuantizer(
        num_codes=1024, code_dim=64, decay=0.99, dead_code_threshold=1.0, rotation_trick=True
    )
    return vq, 64


def _their_module(case: str):
    import vector_quantize_pytorch as vqp

    if case == "fsq":
        return vqp.FSQ(levels=list(LEVELS), dim=len(LEVELS))
    if case == "lfq":
        return vqp.LFQ(
            dim=10, codebook_size=1024, entropy_loss_weight=0.1, commitment_loss_weight=0.25
        )
    if case == "rvq":
        return vqp.ResidualVQ(
            dim=16, num_quantizers=4, codebook_size=256, decay=0.99, threshold_ema_dead_code=1.0
        )
    return vqp.VectorQuantize(
        dim=64, codebook_size=1024, decay=0.99, threshold_ema_dead_code=1.0, rotation_trick=True
    )


def ours(case: str, z_np: np.ndarray, g_np: np.ndarray) -> Callable[[], None]:
    """A zero-argument callable running one jitted training-mode forward + backward (blocking)."""
    q, _ = _ours_module(case)
    z, g = jnp.asarray(z_np), jnp.asarray(g_np)
    variables = nn.meta.unbox(jax.jit(lambda z_: q.init(jax.random.key(0), z_, train=False))(z))
    stats = variables.get("vq_stats", {})

    @jax.jit
    def step(stats, z_, i):
        key = jax.random.fold_in(jax.random.key(0), i)  # in the step: no eager key op timed

        def loss(z_):
            (out, aux), new = q.apply(
                {"vq_stats": stats} if stats else {},
                z_,
                train=True,
                mutable=["vq_stats"],
                rngs={"vq": key},
            )
            return jnp.sum(out * g) + aux["loss"], new.get("vq_stats", {})

        (_, new_stats), grad = jax.value_and_grad(loss, has_aux=True)(z_)
        return grad, new_stats

    state = {"stats": stats, "i": 0}

    def call():
        state["i"] += 1
        grad, state["stats"] = step(state["stats"], z, np.int32(state["i"]))
        jax.block_until_ready((grad, state["stats"]))

    return call


def theirs(case: str, z_np: np.ndarray, g_np: np.ndarray) -> Callable[[], None]:
    import torch

    q = _their_module(case)
    q.train()
    x0, g = torch.from_numpy(z_np)[None], torch.from_numpy(g_np)[None]  # [1, N, D]

    def call():
        x = x0.clone().requires_grad_()
        result = q(x)  # FSQ: (out, ids); the others: (out, ids, aux loss)
        loss = (result[0] * g).sum()
        if len(result) > 2:
            loss = loss + result[2].sum()
        loss.backward()

    return call


def time_case(case: str, n: int, repeats: int) -> dict:
    _, d = _ours_module(case)
    rng = np.random.default_rng(0)
    z_np = rng.normal(size=(n, d)).astype(np.float32)
    g_np = rng.normal(size=(n, d)).astype(np.float32)
    fns = {"ours": ours(case, z_np, g_np), "theirs": theirs(case, z_np, g_np)}
    ms = alternating_medians(fns, repeats)
    return {
        "case": case,
        "ours_ms": round(ms["ours"], 3),
        "vector_quantize_pytorch_ms": round(ms["theirs"], 3),
        "speedup": round(ms["theirs"] / ms["ours"], 3),
    }


def main(argv) -> None:
    del argv
    rows = [time_case(case, _N.value, _REPEATS.value) for case in _CASES.value]
    for r in rows:
        print(
            f"{r['case']:>12}: ours {r['ours_ms']:8.2f} ms, vector-quantize-pytorch "
            f"{r['vector_quantize_pytorch_ms']:8.2f} ms, ratio {r['speedup']:.2f}x "
            f"(medians of {_REPEATS.value})"
        )
    print(json.dumps({"n": _N.value, "cases": rows, **environment()}))


if __name__ == "__main__":
    app.run(main)
