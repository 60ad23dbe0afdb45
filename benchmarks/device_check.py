"""One device check: what this accelerator does with our DiT, in one prepared command.

  python benchmarks/device_check.py                 # GPU/TPU: DiT-XL/2 bf16, < 8 minutes
  python benchmarks/device_check.py                 # CPU: a tiny DiT, < 2 minutes (make test runs it)
  make device-check

On whatever devices it finds, data parallel over all of them, it prints:
  - the training step of a class-conditional DiT (DiT-XL/2 at 256x256 = 32x32x4 latents in bf16 on an
    accelerator; a tiny one on CPU) at the largest batch that fits: the memory of two compiled batch
    sizes is extrapolated linearly to 90 % of the device memory, then that batch is compiled and
    checked (halved while it does not fit);
  - images/s and MFU (XLA's FLOPs of the compiled step over the peak of `training.throughput`'s
    table, or --peak_tflops);
  - the memory of the step: XLA's plan of the compiled program (the figure benchmarks/scale_plan.py
    reports for a mesh) beside the peak the device measured (accelerators only: XLA:CPU keeps no
    allocator statistics);
  - the compile time cold (an empty persistent cache) and warm (the same program read back from it);
  - every attention implementation of models/attention.py on the model's attention shapes, forward
    and backward side by side (an entry this platform cannot run says why);
  - the sampler: images/s of DDIM with classifier-free guidance (one batched call for both
    branches), the whole loop one compiled program, latents only (no VAE decode).
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_step import diffusion_spec, train_config  # noqa: E402  the sibling benchmark's step

from crossmodal_jax.diffusion import gaussian  # noqa: E402
from crossmodal_jax.diffusion.gaussian_samplers import ddim_sample  # noqa: E402
from crossmodal_jax.models.attention import ATTENTION, attend  # noqa: E402
from crossmodal_jax.models.dit import DIT_PRESETS, DiT  # noqa: E402
from crossmodal_jax.training import sharding, throughput  # noqa: E402
from crossmodal_jax.training.loop import compile_step  # noqa: E402
from crossmodal_jax.training.stage import RunContext, abstract_state, fresh_state  # noqa: E402
from crossmodal_jax.training.step import make_optimizer  # noqa: E402

_SIZE = flags.DEFINE_enum(
    "size", "auto", ["auto", "tiny", "XL"], "auto: DiT-XL/2 on an accelerator, tiny on CPU."
)
FLAGS = flags.FLAGS  # --peak_tflops (0: training.throughput's table) and --steps: dit_step's
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 25, "DDIM steps of the sampler check.")

TINY = dict(hidden_size=64, depth=2, num_heads=4, latent=8, batch=8, dtype="float32")
XL = dict(**DIT_PRESETS["XL"], latent=32, batch=0, dtype="bfloat16")  # batch 0: largest that fits
NUM_CLASSES = 1000
MEMORY_FRACTION = 0.9  # of the device's memory a planned step may take


def build(size: dict) -> DiT:
    return DiT(
        input_size=(size["latent"], size["latent"]),
        in_channels=4,
        patch_size=2,
        hidden_size=size["hidden_size"],
        depth=size["depth"],
        num_heads=size["num_heads"],
        cond_vocab_size=NUM_CLASSES + 1,  # the DiT's label table and its null label
        cond_len=1,
        dtype=jnp.dtype(size["dtype"]),
    )


class Step:
    """The shared train_step of the DiT at one global batch, built as training builds it."""

    def __init__(self, dit: DiT, batch: int, mesh):
        self.batch, self.mesh, self.rules = batch, mesh, sharding.DEFAULT_RULES
        self.spec = diffusion_spec(dit, train_config(1_000_000), batch, caption_len=1)
        with jax.set_mesh(mesh), nn.logical_axis_rules(self.rules):
            ctx = RunContext("", mesh, self.rules, seed=0)
            self.tx, _ = make_optimizer(self.spec.train_cfg)
            init_fn, _, self.shardings = abstract_state(self.spec, self.tx, jax.random.key(0), ctx)
            self.init_fn = init_fn
            self.state = jax.eval_shape(lambda: fresh_state(self.spec, init_fn, jax.random.key(0)))
            self.data = sharding.global_batch(next(self.spec.make_iterator()), mesh)
            self.key = jax.random.key(1)

    def compile(self):
        """(compiled step, its FLOPs on one device, seconds to compile)."""
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            compiled, flops = compile_step(
                self.spec, self.tx, self.shardings, self.state, self.data, self.key, self.mesh
            )
        return compiled, flops, time.perf_counter() - t0

    def run(self, compiled, steps: int) -> float:
        """Median seconds of a step (after one warm-up step)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            state = fresh_state(self.spec, self.init_fn, jax.random.key(0))
            times = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                state, metrics = compiled(state, self.data, self.key)
                jax.block_until_ready(metrics)
                if i:
                    times.append(time.perf_counter() - t0)
        return float(np.median(times))


def planned_bytes(compiled) -> int:
    """XLA's plan of a compiled program's memory on one device: arguments, outputs (less what
    the donated state aliases) and temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


def device_memory() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0))


def largest_batch(dit: DiT, mesh, limit: int) -> int:
    """The largest global batch (a multiple of the device count) whose planned memory fits
    MEMORY_FRACTION of `limit`: two compiled sizes extrapolated linearly, then checked."""
    n = mesh.size
    small, large = 4 * n, 8 * n
    a, b = (planned_bytes(Step(dit, size, mesh).compile()[0]) for size in (small, large))
    per_example = max((b - a) / (large - small), 1.0)
    fixed = a - per_example * small
    batch = max(n, int((MEMORY_FRACTION * limit - fixed) / per_example) // n * n)
    while batch > n and planned_bytes(Step(dit, batch, mesh).compile()[0]) > limit:
        batch = max(n, batch // 2 // n * n)
    return batch


def attention_table(dit: DiT, batch: int) -> dict:
    """Median ms of forward + backward of every attention entry on the DiT's self-attention
    shapes (tokens = (latent / patch)^2 + the label token), or why it cannot run here."""
    tokens = (dit.input_size[0] // dit.patch_size) ** 2 + 1
    heads, head_dim = dit.num_heads, dit.hidden_size // dit.num_heads
    shape = (batch, tokens, heads, head_dim)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, shape, dit.dtype) for kk in keys)
    out = {}
    for impl in ATTENTION:
        fn = jax.jit(jax.grad(lambda q, k, v, impl=impl: attend(q, k, v, impl=impl).sum()))
        try:
            jax.block_until_ready(fn(q, k, v))
        except Exception as e:  # noqa: BLE001  a kernel this platform lacks: say which and why
            out[impl] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            times.append(time.perf_counter() - t0)
        out[impl] = round(1e3 * float(np.median(times)), 3)
    return {"shape_BTNH": list(shape), "dtype": str(dit.dtype), "fwd_bwd_ms": out}


def sampler_check(dit: DiT, batch: int, steps: int) -> dict:
    """Images/s of DDIM with guidance 1.5 over the DiT's latents, one compiled program."""
    schedule = gaussian.make_schedule("linear", 1000)
    h, w = dit.input_size
    x = jnp.zeros((1, h, w, 4), jnp.float32)
    params = jax.jit(dit.init)(
        jax.random.key(0), x, jnp.zeros((1,), jnp.int32), *(jnp.zeros((1, 1), jnp.int32),) * 2
    )["params"]
    labels = jnp.arange(batch, dtype=jnp.int32)[:, None] % NUM_CLASSES

    @jax.jit
    def sample(params, key):
        def pair_fn(xt, t):  # one batched call: [conditional; null label]
            ids = jnp.concatenate([labels, jnp.full_like(labels, NUM_CLASSES)])
            both = dit.apply(
                {"params": params},
                jnp.concatenate([xt, xt]),
                jnp.concatenate([t, t]),
                ids,
                jnp.ones_like(ids),
            )
            return jnp.split(both, 2)

        model_fn = gaussian.guided_model_fn(pair_fn, 1.5)
        x_T = jax.random.normal(key, (batch, h, w, 4))
        return ddim_sample(schedule, model_fn, x_T, key, num_steps=steps, prediction="eps")

    t0 = time.perf_counter()
    jax.block_until_ready(sample(params, jax.random.key(1)))
    first = time.perf_counter() - t0
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(sample(params, jax.random.key(2 + i)))
        times.append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "ddim_steps": steps,
        "first_call_s": round(first, 2),
        "images_per_s": round(batch / float(np.median(times)), 2),
    }


def main(argv) -> None:
    del argv
    t_start = time.perf_counter()
    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    size = dict(XL if _SIZE.value == "XL" or (_SIZE.value == "auto" and accelerator) else TINY)
    cache = tempfile.mkdtemp(prefix="device-check-cache-")
    jax.config.update("jax_compilation_cache_dir", cache)  # cold: empty; warm: read back
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    dit = build(size)
    limit = device_memory()
    batch = size["batch"] or (largest_batch(dit, mesh, limit) if limit else 8 * mesh.size)
    step = Step(dit, batch, mesh)
    compiled, flops, cold_s = step.compile()
    jax.clear_caches()
    _, _, warm_s = step.compile()
    step_s = step.run(compiled, FLAGS.steps)
    peak = FLAGS.peak_tflops or throughput.device_peak_tflops(device.device_kind)
    achieved = flops * mesh.size / step_s / 1e12
    stats = device.memory_stats() or {}
    out = {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": mesh.size,
        "model": "DiT-XL/2" if size["hidden_size"] == XL["hidden_size"] else "DiT-tiny/2",
        "latent": [size["latent"], size["latent"], 4],
        "dtype": size["dtype"],
        "batch": batch,
        "step_ms": round(1e3 * step_s, 2),
        "images_per_s": round(batch / step_s, 2),
        "achieved_tflops": round(achieved, 4),
        "peak_tflops_per_device": peak,
        "mfu": round(achieved / (peak * mesh.size), 4) if peak else None,
        "planned_bytes_per_device": planned_bytes(compiled),
        "measured_peak_bytes": int(stats["peak_bytes_in_use"]) if stats else None,
        "device_memory_bytes": limit or None,
        "compile_cold_s": round(cold_s, 2),
        "compile_warm_s": round(warm_s, 2),
        "attention": attention_table(dit, max(1, batch // mesh.size)),
        "sampler": sampler_check(dit, 32 if accelerator else 4, _SAMPLE_STEPS.value),
    }
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(
        f"{out['model']} {out['dtype']} batch {batch} on {mesh.size} x {device.device_kind}: "
        f"{out['images_per_s']} images/s, MFU {out['mfu']}, compile {out['compile_cold_s']} s "
        f"cold / {out['compile_warm_s']} s warm; memory planned {out['planned_bytes_per_device']} "
        f"B, measured {out['measured_peak_bytes']} B; sampler {out['sampler']['images_per_s']} "
        f"images/s; attention {out['attention']['fwd_bwd_ms']}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
