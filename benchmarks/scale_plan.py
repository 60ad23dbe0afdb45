"""Pod-size memory and communication of the real train step, by ahead-of-time compilation on fake
CPU devices (nothing runs): does a model fit, and what do its collectives move?

  python benchmarks/scale_plan.py [--devices=8,64] [--models=dit_xl2,t2i_2b] \
      [--presets=dp,fsdp,fsdp_tp] [--global_batch=0]
  python benchmarks/scale_plan.py --devices=8,64,256 --models=imagenet256,coco256_t2i
  python benchmarks/scale_plan.py --devices=8,64 --models=librispeech_s2t

Models (float32 weights, AdamW + weight EMA, the shared `train_step`):
  dit_xl2      DiT-XL/2 at 256×256: 32×32×4 latents, patch 2 (256 tokens), unconditional (the
               class embedding of the paper would add 1.2 M parameters); bf16, remat;
  t2i_2b       a ~2 B-parameter text→image DiT: width 2048, 20 cross-attention blocks (16 heads),
               the same latents, captions of 128 tokens; bf16, remat;
  imagenet256  configs/imagenet256.py's generator, read from its get_config(): DiT-XL/2 with
               DiT's label embedding (1,000 classes), its optimizer and diffusion settings;
  coco256_t2i  configs/coco256_t2i.py's generator: a cross-attention DiT-B/2 whose condition is
               the frozen T5 v1.1 base encoder's hidden states (64 tokens × 768), computed in
               every step: the encoder (random init, t5-v1_1-base's shape) is in the compiled
               step and its float32 weights in the state, sharded by the same rules;
  librispeech_s2t  configs/librispeech_s2t.py's masked text generator (the Experiment built on
               tfds's mock data: shapes come from the config) over precomputed code ids and their
               mask, the frozen tokenizer's variables in its state.
The config rows are built by the generator's own builders (stages/builders.py: build_dit,
example_inputs, caption_condition) and objective (stages/generators.py: gaussian_objective)
over the batch the latent shards feed (`tokenizer_latents`, text ids and mask, label), so the
plan follows the configs. Their latents are the SD-VAE's: image_size / 8 a side, 4 channels.

Presets on n devices: dp (data=n: every device holds everything), fsdp (fsdp=n: weights,
gradients and Adam split n ways), fsdp_tp (fsdp=n/4, tensor=4: MLP and heads split 4 ways
inside a host, the rest FSDP).

For each (devices, model, preset): parameters; XLA's per-device bytes of the compiled step
(`memory_analysis`: arguments = the sharded state + this device's batch, outputs, temporaries);
the analytic per-device bytes of weights + Adam + EMA (16 B a parameter) and of the float32
gradients (4 B), split by fsdp × tensor, plus a frozen text encoder's float32 weights (4 B); and
the bytes of each collective kind in one device's program (training/plan.py). Each device count
compiles in its own process (the fake device count is fixed when JAX starts). The last line is
one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags
from scale_cases import (  # the sibling module: the rows' models and cases
    CONFIGS,
    DEFAULT_BATCH,
    FROZEN_BYTES_PER_PARAM,
    GIB,
    MODELS,
    TEXT_CONFIGS,
    config_case,
    legacy_case,
    load_config,
    preset_mesh,
    text_case,
)

_DEVICES = flags.DEFINE_list("devices", ["8", "64"], "Fake device counts.")
_MODELS = flags.DEFINE_list("models", ["dit_xl2", "t2i_2b"], "Models (see the docstring).")
_PRESETS = flags.DEFINE_list("presets", ["dp", "fsdp", "fsdp_tp"], "Sharding presets.")
_BATCH = flags.DEFINE_integer(
    "global_batch", 0, "Global batch; 0 = the config's generator.train.batch_size (256 otherwise)."
)
_CHILD = flags.DEFINE_integer("child", 0, "Internal: compile for this many devices, print rows.")


def batch_size(model: str) -> int:
    """--global_batch, else the config's training batch: the plan is of the batch it trains at."""
    if _BATCH.value:
        return _BATCH.value
    if model in CONFIGS or model in TEXT_CONFIGS:
        return int(load_config(model).generator.train.batch_size)
    return DEFAULT_BATCH


def child(n: int) -> None:
    """Compile every (model, preset) on n fake devices; one JSON row a case on stdout."""
    import flax.linen as nn
    import jax

    from crossmodal_jax.training import plan, sharding

    assert jax.device_count() == n, jax.device_count()
    for model in _MODELS.value:
        batch = batch_size(model)
        if model in CONFIGS or model in TEXT_CONFIGS:
            rules = sharding.rules_from_config(load_config(model).mesh.rules)
        else:
            rules = sharding.DEFAULT_RULES
        for preset in _PRESETS.value:
            shape = preset_mesh(preset, n)
            mesh = sharding.make_mesh(shape)
            t0 = time.perf_counter()
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                if model in CONFIGS:
                    case = config_case(model, mesh, rules, batch)
                elif model in TEXT_CONFIGS:
                    case = text_case(model, mesh, batch)
                else:
                    case = legacy_case(model, batch)
                row = plan.plan_step(case.spec, mesh, rules, case.batch)
            shards = shape.get("fsdp", 1) * shape.get("tensor", 1)
            analytic = plan.analytic_bytes(row["params"], shards)
            analytic["frozen"] = case.frozen_params * FROZEN_BYTES_PER_PARAM / shards
            row.update(
                devices=n,
                model=model,
                preset=preset,
                mesh=shape,
                batch=batch,
                frozen_params=case.frozen_params,
                compile_s=round(time.perf_counter() - t0, 1),
                analytic=analytic,
                replicated=len(row["replicated"]),
            )
            print("ROW " + json.dumps(row), flush=True)


def table(rows: list[dict]) -> str:
    lines = [
        "| devices | model | preset | params | arguments | temporaries | analytic state + grads "
        "(+ frozen) | all-gather | reduce-scatter | all-reduce | compile |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        c, a = r["collectives"], r["analytic"]
        frozen = f" + {a['frozen'] / GIB:.2f}" if a.get("frozen") else ""
        params = f"{r['params'] / 1e9:.3f} B"
        if r.get("frozen_params"):
            params += f" + {r['frozen_params'] / 1e9:.3f} B frozen"
        lines.append(
            f"| {r['devices']} | {r['model']} | {r['preset']} | {params} "
            f"| {r['argument_bytes'] / GIB:.2f} GiB | {r['temp_bytes'] / GIB:.2f} GiB "
            f"| {a['state'] / GIB:.2f} + {a['grads'] / GIB:.2f}{frozen} GiB "
            f"| {c['all-gather'] / GIB:.2f} GiB | {c['reduce-scatter'] / GIB:.2f} GiB "
            f"| {c['all-reduce'] / GIB:.2f} GiB | {r['compile_s']} s |"
        )
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    unknown = set(_MODELS.value) - set(MODELS) - set(CONFIGS) - set(TEXT_CONFIGS)
    if unknown:
        sys.exit(
            f"unknown --models {sorted(unknown)}; available: {', '.join([*MODELS, *CONFIGS, *TEXT_CONFIGS])}"
        )
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
    print(json.dumps({"global_batch_flag": _BATCH.value, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
