"""Pod-size memory and communication of the real train step, by ahead-of-time compilation on fake
CPU devices (nothing runs): does a model fit, and what do its collectives move?

  python benchmarks/scale_plan.py [--devices=8,64] [--models=dit_xl2,t2i_2b] \
      [--presets=dp,fsdp,fsdp_tp] [--global_batch=256]

Models (bf16 compute, float32 weights, remat, AdamW + weight EMA, the shared `train_step`):
  dit_xl2  DiT-XL/2 at 256×256: 32×32×4 latents, patch 2 (256 tokens), unconditional (the class
           embedding of the paper would add 1.2 M parameters);
  t2i_2b   a ~2 B-parameter text→image DiT: width 2048, 20 cross-attention blocks (16 heads),
           the same latents, captions of 128 tokens.
Presets on n devices: dp (data=n: every device holds everything), fsdp (fsdp=n: weights,
gradients and Adam split n ways), fsdp_tp (fsdp=n/4, tensor=4: MLP and heads split 4 ways
inside a host, the rest FSDP).

For each (devices, model, preset): parameters; XLA's per-device bytes of the compiled step
(`memory_analysis`: arguments = the sharded state + this device's batch, outputs, temporaries);
the analytic per-device bytes of weights + Adam + EMA (16 B a parameter) and of the float32
gradients (4 B), split by fsdp × tensor; and the bytes of each collective kind in one device's
program (training/plan.py). Each device count compiles in its own process (the fake device count
is fixed when JAX starts). The last line is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags

_DEVICES = flags.DEFINE_list("devices", ["8", "64"], "Fake device counts.")
_MODELS = flags.DEFINE_list("models", ["dit_xl2", "t2i_2b"], "Models (see the docstring).")
_PRESETS = flags.DEFINE_list("presets", ["dp", "fsdp", "fsdp_tp"], "Sharding presets.")
_BATCH = flags.DEFINE_integer("global_batch", 256, "Global batch.")
_CHILD = flags.DEFINE_integer("child", 0, "Internal: compile for this many devices, print rows.")

LATENT, CHANNELS, PATCH, CAPTION = 32, 4, 2, 128
MODELS = {
    "dit_xl2": dict(hidden_size=1152, depth=28, num_heads=16),
    "t2i_2b": dict(
        hidden_size=2048,
        depth=20,
        num_heads=16,
        conditioning="cross_attention",
        cond_vocab_size=32_000,
        cond_len=CAPTION,
    ),
}
GIB = 2**30


def preset_mesh(preset: str, n: int) -> dict[str, int]:
    return {"dp": dict(data=n), "fsdp": dict(fsdp=n), "fsdp_tp": dict(fsdp=n // 4, tensor=4)}[
        preset
    ]


def stage_spec(model: str):
    """The StageSpec of a model: eps-prediction Gaussian diffusion on latents (+ caption ids)."""
    import jax.numpy as jnp
    from dit_step import diffusion_spec, train_config

    from crossmodal_jax.models.dit import DiT

    size = MODELS[model]
    dit = DiT((LATENT, LATENT), CHANNELS, patch_size=PATCH, dtype=jnp.bfloat16, remat=True, **size)
    captioned = "cond_len" in size
    caption_len = CAPTION if captioned else 0
    spec = diffusion_spec(dit, train_config(1000), _BATCH.value, caption_len=caption_len)
    return dataclasses.replace(spec, name=model), captioned


def child(n: int) -> None:
    """Compile every (model, preset) on n fake devices; one JSON row a case on stdout."""
    import flax.linen as nn
    import jax
    import numpy as np

    from crossmodal_jax.training import plan, sharding

    assert jax.device_count() == n, jax.device_count()
    rules = sharding.DEFAULT_RULES
    for model in _MODELS.value:
        spec, captioned = stage_spec(model)
        batch = {
            "latents": jax.ShapeDtypeStruct((_BATCH.value, LATENT, LATENT, CHANNELS), np.float32)
        }
        if captioned:
            batch["text"] = jax.ShapeDtypeStruct((_BATCH.value, CAPTION), np.int32)
            batch["text_mask"] = jax.ShapeDtypeStruct((_BATCH.value, CAPTION), np.int32)
        for preset in _PRESETS.value:
            shape = preset_mesh(preset, n)
            mesh = sharding.make_mesh(shape)
            t0 = time.perf_counter()
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                row = plan.plan_step(spec, mesh, rules, batch)
            shards = shape.get("fsdp", 1) * shape.get("tensor", 1)
            row.update(
                devices=n,
                model=model,
                preset=preset,
                mesh=shape,
                compile_s=round(time.perf_counter() - t0, 1),
                analytic=plan.analytic_bytes(row["params"], shards),
                replicated=len(row["replicated"]),
            )
            print("ROW " + json.dumps(row), flush=True)


def table(rows: list[dict]) -> str:
    lines = [
        "| devices | model | preset | params | arguments | temporaries | analytic state + grads "
        "| all-gather | reduce-scatter | all-reduce | compile |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        c, a = r["collectives"], r["analytic"]
        lines.append(
            f"| {r['devices']} | {r['model']} | {r['preset']} | {r['params'] / 1e9:.3f} B "
            f"| {r['argument_bytes'] / GIB:.2f} GiB | {r['temp_bytes'] / GIB:.2f} GiB "
            f"| {a['state'] / GIB:.2f} + {a['grads'] / GIB:.2f} GiB "
            f"| {c['all-gather'] / GIB:.2f} GiB | {c['reduce-scatter'] / GIB:.2f} GiB "
            f"| {c['all-reduce'] / GIB:.2f} GiB | {r['compile_s']} s |"
        )
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if _CHILD.value:
        child(_CHILD.value)
        return
    rows = []
    here = os.path.dirname(os.path.abspath(__file__))
    for n in (int(d) for d in _DEVICES.value):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, os.path.join(here, "scale_plan.py"), f"--child={n}"]
        cmd += [f"--models={','.join(_MODELS.value)}", f"--presets={','.join(_PRESETS.value)}"]
        cmd += [f"--global_batch={_BATCH.value}"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{n} devices failed:\n{out.stderr[-3000:]}")
        found = [
            json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")
        ]
        print(f"{n} devices: {len(found)} cases compiled in {time.perf_counter() - t0:.0f} s")
        rows += found
    print(table(rows))
    print(json.dumps({"batch": _BATCH.value, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
