"""Train-step throughput and MFU of our DiT, plus the forward FLOPs of DiT-XL/2 against the paper.

  python benchmarks/dit_step.py --preset=S --batch=8 --steps=5                     # CPU, minutes
  python benchmarks/dit_step.py --preset=XL --batch=256 --dtype=bfloat16 --peak_tflops=989

The timed step is the shared `train_step` (AdamW, global-norm clipping, weight EMA), built exactly
as training builds it (`training.stage.abstract_state` and `fresh_state`,
`training.loop.compile_step`; data parallel over all devices), with a Gaussian-diffusion eps loss
over random latents and an unconditional DiT (`cond_ids=None`): the class/text embedding of a
conditional DiT is a negligible share of FLOPs.

FLOPs come from XLA's cost analysis of the compiled step (per device, times the device count):
"achieved TFLOP/s" is what the hardware ran, MFU = achieved / (--peak_tflops x devices).
The DiT paper's 118.6 "Gflops" for DiT-XL/2 (256x256 images = 32x32x4 latents) count one
multiply-add as one op (fvcore), so our forward FLOPs (2 per multiply-add) should be ~2x that;
both the XLA count and an analytic count are printed. The last line is one JSON object.
"""

from __future__ import annotations

import json
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from clu import parameter_overview

from crossmodal_jax.diffusion import gaussian
from crossmodal_jax.models.attention import ATTENTION
from crossmodal_jax.models.dit import DIT_PRESETS, DiT
from crossmodal_jax.training import sharding, throughput
from crossmodal_jax.training.loop import compile_step
from crossmodal_jax.training.stage import RunContext, StageSpec, abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer

_PRESET = flags.DEFINE_enum("preset", "S", list(DIT_PRESETS), "DiT size (the paper's S/B/L/XL).")
_PATCH = flags.DEFINE_integer("patch", 2, "Patch size over the latent grid.")
_LATENT = flags.DEFINE_integer("latent", 32, "Latent grid side (32 = 256x256 images in the paper).")
_CHANNELS = flags.DEFINE_integer("channels", 4, "Latent channels.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch (split over all devices).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one compiling step).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak dense TFLOP/s of ONE device (0: no MFU).")
_ATTENTION = flags.DEFINE_enum(
    "attention", "xla", list(ATTENTION), "Attention kernel (models/attention.py)."
)
_XL_FLOPS = flags.DEFINE_bool("xl_flops", True, "Also count DiT-XL/2 forward FLOPs (compile only).")

PAPER_XL2_GFLOPS = 118.6  # DiT paper, Table 4: DiT-XL/2 at 256x256 (fvcore: multiply-adds)


def build_dit(preset: str, patch: int, latent: int, channels: int, dtype: str) -> DiT:
    return DiT(
        input_size=(latent, latent),
        in_channels=channels,
        patch_size=patch,
        dtype=jnp.dtype(dtype),
        attention=_ATTENTION.value,
        **DIT_PRESETS[preset],
    )


def analytic_forward_macs(preset: str, patch: int, latent: int, channels: int) -> int:
    """Multiply-adds of one unconditional DiT forward pass (batch 1), as the paper counts them.

    Per block: adaLN 6D^2 (once per example), qkv + out projections 4TD^2, attention scores and
    weighted sum 2T^2D, MLP 8TD^2 (ratio 4). Plus patch embedding, timestep MLP, final layer.
    """
    p = DIT_PRESETS[preset]
    d, depth = p["hidden_size"], p["depth"]
    t = (latent // patch) ** 2
    patch_features = patch * patch * channels
    block = 6 * d * d + 4 * t * d * d + 2 * t * t * d + 8 * t * d * d
    embed = t * patch_features * d + 256 * d + d * d  # patchify; t-MLP (256 sinusoid features)
    final = 2 * d * d + t * d * patch_features
    return depth * block + embed + final


def forward_flops(dit: DiT, batch: int) -> float:
    """XLA FLOPs of one forward pass, compiled from abstract shapes (nothing is run)."""
    h, w = dit.input_size
    x = jax.ShapeDtypeStruct((batch, h, w, dit.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    init = lambda k, x_, t_: nn.meta.unbox(dit.init(k, x_, t_))
    params = jax.eval_shape(init, jax.random.key(0), x, t)
    fwd = jax.jit(lambda v, x_, t_: dit.apply(v, x_, t_))
    return throughput.step_flops(fwd.lower(params, x, t).compile())


def diffusion_spec(
    dit: DiT, train_cfg: ml_collections.ConfigDict, batch: int, caption_len: int = 0
) -> StageSpec:
    """A generator-like stage: eps-prediction loss over random (already normalised) latents, and
    with `caption_len` > 0 caption ids the DiT is conditioned on (a DiT built with cond_len)."""
    schedule = gaussian.make_schedule("linear", 1000)
    h, w = dit.input_size

    def objective(params, model_state, batch_, key):
        cond = (batch_["text"], batch_["text_mask"]) if caption_len else ()
        model_fn = lambda xt, t: dit.apply({"params": params}, xt, t, *cond, train=True)
        loss, _ = gaussian.training_loss(
            schedule, model_fn, batch_["latents"], key, prediction="eps"
        )
        return loss, (model_state, {})

    def init_variables(key):
        x = jnp.zeros((1, h, w, dit.in_channels), jnp.float32)
        cond = (jnp.zeros((1, caption_len), jnp.int32),) * 2 if caption_len else ()
        return dit.init(key, x, jnp.zeros((1,), jnp.int32), *cond)

    def make_iterator():
        rng = np.random.default_rng(0)
        data = {"latents": rng.standard_normal((batch, h, w, dit.in_channels), np.float32)}
        if caption_len:
            data["text"] = rng.integers(0, dit.cond_vocab_size, (batch, caption_len), np.int32)
            data["text_mask"] = np.ones((batch, caption_len), np.int32)
        return iter(lambda: data, None)  # the same batch forever

    return StageSpec(
        name="dit",
        train_cfg=train_cfg,
        init_variables=init_variables,
        objective=objective,
        make_iterator=make_iterator,
    )


def train_config(steps: int) -> ml_collections.ConfigDict:
    """The DiT paper's optimiser: AdamW, lr 1e-4, no weight decay (warmup only for the schedule)."""
    return ml_collections.ConfigDict(
        dict(
            steps=steps,
            learning_rate=1e-4,
            warmup_steps=1,
            end_lr_fraction=1.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            grad_clip=1.0,
            ema_decay=0.9999,
            skip_nonfinite=False,
        )
    )


def time_train_step(dit: DiT, batch: int, steps: int) -> dict:
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    rules = sharding.DEFAULT_RULES
    with tempfile.TemporaryDirectory() as workdir, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ctx = RunContext(workdir, mesh, rules, seed=0)
        spec = diffusion_spec(dit, train_config(steps + 1), batch)
        tx, _ = make_optimizer(spec.train_cfg)
        init_fn, _, shardings = abstract_state(spec, tx, jax.random.key(0), ctx)
        state = fresh_state(spec, init_fn, jax.random.key(0))
        data = sharding.global_batch(next(spec.make_iterator()), mesh)
        key = jax.random.key(1)
        t0 = time.perf_counter()
        compiled, device_flops = compile_step(spec, tx, shardings, state, data, key, mesh)
        compile_s = time.perf_counter() - t0
        flops_per_step = device_flops * mesh.size
        state, metrics = compiled(state, data, key)  # warm-up (allocations, thread pools)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, data, key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        params = int(parameter_overview.count_parameters(state.params))
        loss = float(metrics["loss"])
    step_s = float(np.median(times))
    return {
        "devices": mesh.size,
        "params": params,
        "compile_s": round(compile_s, 2),
        "step_ms": round(1000 * step_s, 2),
        "images_per_s": round(batch / step_s, 2),
        "train_step_gflop": round(flops_per_step / 1e9, 3),
        "achieved_tflops_per_s": round(flops_per_step / step_s / 1e12, 4),
        "loss": round(loss, 4),
    }


def main(argv) -> None:
    del argv
    preset, patch, latent, ch = _PRESET.value, _PATCH.value, _LATENT.value, _CHANNELS.value
    dit = build_dit(preset, patch, latent, ch, _DTYPE.value)
    out = {
        "model": f"DiT-{preset}/{patch}",
        "latent": [latent, latent, ch],
        "batch": _BATCH.value,
        "dtype": _DTYPE.value,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }
    out.update(time_train_step(dit, _BATCH.value, _STEPS.value))
    fwd_gflop = forward_flops(dit, _BATCH.value) / 1e9  # one-device program of the whole batch
    out["forward_gflop"] = round(fwd_gflop, 3)
    # ~3 for a plain backward pass; the optimiser and weight EMA add a little.
    out["train_step_over_forward"] = round(out["train_step_gflop"] / fwd_gflop, 3)
    if _PEAK.value > 0:
        out["peak_tflops_per_device"] = _PEAK.value
        out["mfu"] = round(out["achieved_tflops_per_s"] / (_PEAK.value * out["devices"]), 4)
    print(
        f"{out['model']} batch {out['batch']} {out['dtype']} on {out['devices']} "
        f"{out['platform']} device(s): {out['step_ms']} ms/step, {out['images_per_s']} images/s, "
        f"{out['achieved_tflops_per_s']} TFLOP/s achieved"
        + (f", MFU {out['mfu']:.1%}" if "mfu" in out else "")
    )
    if _XL_FLOPS.value:
        xl = build_dit("XL", 2, 32, 4, "float32")
        xla_g = forward_flops(xl, 1) / 1e9
        macs_g = analytic_forward_macs("XL", 2, 32, 4) / 1e9
        out["xl2_forward_gflops_xla"] = round(xla_g, 2)
        out["xl2_forward_gmacs_analytic"] = round(macs_g, 2)
        out["xl2_paper_gflops"] = PAPER_XL2_GFLOPS
        out["xl2_xla_over_paper"] = round(xla_g / PAPER_XL2_GFLOPS, 3)
        out["xl2_analytic_macs_over_paper"] = round(macs_g / PAPER_XL2_GFLOPS, 4)
        print(
            f"DiT-XL/2 forward (32x32x4, batch 1): XLA {xla_g:.1f} GFLOPs; analytic "
            f"{macs_g:.1f} G multiply-adds = {2 * macs_g:.1f} GFLOPs; paper {PAPER_XL2_GFLOPS} "
            f"'Gflops' (multiply-adds): XLA/paper = {xla_g / PAPER_XL2_GFLOPS:.3f}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
