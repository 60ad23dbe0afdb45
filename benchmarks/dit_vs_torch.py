"""One DiT training step: ours (JAX, the shared train_step) vs diffusers' DiTTransformer2DModel.

  pip install -e .[bench]      # torch==2.13.0 (CPU) + diffusers
  python benchmarks/dit_vs_torch.py [--preset=S] [--batch=8] [--latent=32] [--repeats=10]

Same model size (DiT preset: depth, width, heads; patch 2; 32x32x4 latents; MLP ratio 4, tanh
GELU; adaLN-Zero), same batch, same step: eps-prediction Gaussian-diffusion MSE on random latents
(linear schedule, T=1000), backward, global-norm clipping at 1, AdamW (lr 1e-4, betas 0.9/0.999,
no weight decay), weight EMA. Ours is unconditional (`cond_ids=None`); diffusers' DiT always takes
class labels (all 0 here); the label and per-block timestep embeddings it adds are < 1% of FLOPs.
Both run float32 (or, with --dtype=bfloat16, bf16 compute: ours through the model's dtype, theirs
through torch.autocast; weights float32 in both) on this machine's CPU with their default
threading, ours with --attention's kernel (models/attention.py); one timed step of each
alternates per repeat (compile and warm-up excluded). Run it on an idle machine: under other load
PyTorch's OpenMP threads slow down far more than XLA's (the JSON records the load average).
Prints both medians and speed_ratio = torch time / JAX time (> 1: ours is faster); the last
line is one JSON object.

The model flags (--preset, --batch, --patch, --latent, --channels, --dtype, --attention) are those
of dit_step.py.
"""

from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from dit_step import (  # the sibling script; importing it defines the model flags
    _ATTENTION,
    _BATCH,
    _CHANNELS,
    _DTYPE,
    _LATENT,
    _PATCH,
    _PRESET,
    build_dit,
    diffusion_spec,
    train_config,
)
from timing import alternating_medians

from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.models.dit import DIT_PRESETS
from crossmodal_jax.training import sharding
from crossmodal_jax.training.loop import compile_step
from crossmodal_jax.training.stage import RunContext, abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer

_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps of each implementation.")
EMA_DECAY = 0.9999


def ours(preset: str, patch: int, latent: int, channels: int, batch: int):
    """(one blocking training step, parameter count, compile seconds) of our DiT, one device."""
    dit = build_dit(preset, patch, latent, channels, _DTYPE.value)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    rules = sharding.DEFAULT_RULES
    ctx = RunContext("", mesh, rules, seed=0)
    spec = diffusion_spec(dit, train_config(1_000_000), batch)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        tx, _ = make_optimizer(spec.train_cfg)
        init_fn, _, shardings = abstract_state(spec, tx, jax.random.key(0), ctx)
        state = fresh_state(spec, init_fn, jax.random.key(0))
        data = sharding.global_batch(next(spec.make_iterator()), mesh)
        key = jax.random.key(1)
        t0 = time.perf_counter()
        step_fn, _ = compile_step(spec, tx, shardings, state, data, key, mesh)
        compile_s = time.perf_counter() - t0
    holder = {"state": state}
    n_params = sum(x.size for x in jax.tree.leaves(state.params))

    def call():
        holder["state"], metrics = step_fn(holder["state"], data, key)
        jax.block_until_ready(metrics)

    return call, n_params, compile_s


def theirs(preset: str, patch: int, latent: int, channels: int, batch: int):
    """(one training step, parameter count) of diffusers' DiTTransformer2DModel (PyTorch, CPU)."""
    import torch
    from diffusers import DiTTransformer2DModel

    size = DIT_PRESETS[preset]
    heads = size["num_heads"]
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=size["hidden_size"] // heads,
        in_channels=channels,
        num_layers=size["depth"],
        sample_size=latent,
        patch_size=patch,
        num_embeds_ada_norm=1000,
    ).train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    schedule = gaussian.make_schedule("linear", 1000)
    sqrt_ab = torch.tensor(np.asarray(schedule.sqrt_alphas_cumprod))
    sqrt_1m_ab = torch.tensor(np.asarray(schedule.sqrt_one_minus_alphas_cumprod))
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal((batch, channels, latent, latent), np.float32))
    labels = torch.zeros(batch, dtype=torch.long)

    def call():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        xt = sqrt_ab[t][:, None, None, None] * x0 + sqrt_1m_ab[t][:, None, None, None] * noise
        # bfloat16: autocast, PyTorch's mixed precision (weights stay float32, as ours do).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_DTYPE.value == "bfloat16"):
            out = model(xt, timestep=t, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)

    return call, sum(p.numel() for p in params)


def main(argv) -> None:
    del argv
    import torch

    load_before = os.getloadavg()[0]
    args = (_PRESET.value, _PATCH.value, _LATENT.value, _CHANNELS.value, _BATCH.value)
    jax_step, jax_params, compile_s = ours(*args)
    torch_step, torch_params = theirs(*args)
    # Warm-up: allocator, thread pools (compilation is timed apart in `ours`).
    ms = alternating_medians({"jax": jax_step, "torch": torch_step}, _REPEATS.value, warmup=2)
    jax_ms, torch_ms = ms["jax"], ms["torch"]
    result = {
        "model": f"DiT-{args[0]}/{args[1]}",
        "latent": [args[2], args[2], args[3]],
        "batch": args[4],
        "dtype": _DTYPE.value,
        "attention": _ATTENTION.value,
        "jax_ms": round(jax_ms, 2),
        "torch_ms": round(torch_ms, 2),
        "speed_ratio": round(torch_ms / jax_ms, 3),
        "jax_compile_s": round(compile_s, 2),
        "jax_params": int(jax_params),
        "torch_params": int(torch_params),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "repeats": _REPEATS.value,
        # Other work on the machine skews the ratio (PyTorch's OpenMP threads suffer most).
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(
        f"{result['model']} batch {result['batch']}: JAX {jax_ms:.1f} ms/step, "
        f"PyTorch (diffusers) {torch_ms:.1f} ms/step -> JAX/PyTorch speed {result['speed_ratio']}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
