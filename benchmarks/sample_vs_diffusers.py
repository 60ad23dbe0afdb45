"""Our whole-loop sampler against diffusers' DiTPipeline on the same weights, noise and guidance.

  python benchmarks/sample_vs_diffusers.py [--models=S,B] [--batches=1,8,32] [--samplers=ddim,dpm_solver]
      [--guidance=1.5] [--repeats=3] [--dtypes=float32,bfloat16]

For each DiT size (the paper's S/2 and B/2 over 32x32x4 latents, random weights: a diffusers
`DiTTransformer2DModel` with learned sigma, saved as a diffusers folder and read by our converter,
pretrained/class_sampler.py) and each sampler (DDIM 50 steps, DPM-Solver++(2M) 20 steps), with
guidance --guidance and without (1.0):
  - theirs: `DiTPipeline(...)(labels, guidance_scale, num_inference_steps)` with the scheduler of
    that sampler, the initial latents replaced by ours (its `randn_tensor`), decoding with a tiny
    random AutoencoderKL (both sides decode with it; its cost is small beside the DiT's), float32;
  - ours: `ClassSampler` with the same timesteps and DiTPipeline's guidance rule (every eps
    channel), one jitted program for the chain and one for decoding, once per --dtypes entry (the
    DiT's compute dtype; weights and the chain's arithmetic stay float32).
It checks the final latents agree (max |ours - theirs| over their range, as tests/pretrained/
test_class_sampler.py does at 1e-3 in float32), then times images/s at each batch size, all sides
running alternately (timing.py), median of --repeats calls after a warm-up call. The last line is
one JSON object with `min_speedup_batch8` (the smallest ours/theirs images/s ratio at batch 8 over
the models and samplers) and `max_rel_diff` (the largest latent difference over its range) of the
first dtype, and the same keys suffixed `_bfloat16` (each further dtype).
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import numpy as np
from absl import app, flags
from timing import alternating_medians, environment

from crossmodal_jax.pretrained import class_sampler as cs

_MODELS = flags.DEFINE_list("models", ["S", "B"], "DiT sizes: S (384 wide) and/or B (768).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "32"], "Batch sizes timed.")
_SAMPLERS = flags.DEFINE_list("samplers", ["ddim", "dpm_solver"], "ddim (50), dpm_solver (20).")
_GUIDANCE = flags.DEFINE_float("guidance", 1.5, "Guidance scale of the guided rows.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of each side per setting.")
_DTYPES = flags.DEFINE_list(
    "dtypes", ["float32", "bfloat16"], "Our DiT's compute dtypes (theirs runs in float32)."
)
_CHECK_BATCH = 2  # examples of the equality check

HEADS = {"S": 6, "B": 12}  # x head dim 64: hidden 384 / 768, 12 blocks each
STEPS = {"ddim": 50, "dpm_solver": 20}
LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def torch_parts(model: str, folder: str):
    """(diffusers DiT, tiny VAE), random weights, saved under `folder` as diffusers folders."""
    import diffusers
    import torch

    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=HEADS[model],
        attention_head_dim=64,
        in_channels=4,
        out_channels=8,  # learned sigma, as the released DiTs
        num_layers=12,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_eps=1e-6,
    )
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    with torch.no_grad():  # adaLN-Zero's zeros would make every output 0: perturb all weights
        for p in [*dit.parameters(), *vae.parameters()]:
            p.normal_(0.0, 0.02)
        shared = dit.transformer_blocks[0].norm1.emb.state_dict()
        for block in dit.transformer_blocks[1:]:  # one timestep/label embedder, as DiT's own
            block.norm1.emb.load_state_dict(shared)
    dit.save_pretrained(os.path.join(folder, "dit"), safe_serialization=True)
    vae.save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
    return dit.eval(), vae.eval()


def scheduler(name: str):
    import diffusers

    if name == "ddim":
        return diffusers.DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True)
    return diffusers.DPMSolverMultistepScheduler(
        **LINEAR,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="zero",
    )


class Theirs:
    """DiTPipeline with our initial latents; records the final latents it decodes."""

    def __init__(self, dit, vae, sampler: str, guidance: float):
        import diffusers
        from diffusers.pipelines.dit import pipeline_dit

        self.module, self.steps, self.guidance = pipeline_dit, STEPS[sampler], guidance
        self.pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler(sampler))
        self.pipe.set_progress_bar_config(disable=True)
        self.latents = None
        decode, factor = vae.decode, vae.config.scaling_factor

        def recording_decode(z, *args, **kwargs):  # DiTPipeline decodes latents / factor
            self.latents = (z * factor).permute(0, 2, 3, 1).numpy()
            return decode(z, *args, **kwargs)

        vae.decode = recording_decode

    def __call__(self, labels: list[int], x_T: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(x_T.transpose(0, 3, 1, 2)))
        self.module.randn_tensor = lambda *a, **k: x
        with torch.no_grad():
            return self.pipe(
                labels,
                guidance_scale=self.guidance,
                num_inference_steps=self.steps,
                output_type="np",
            )[0]


def timesteps_of(sampler: str) -> np.ndarray:
    sched = scheduler(sampler)
    sched.set_timesteps(STEPS[sampler])
    return sched.timesteps.numpy()


def compare(model: str, sampler: str, guidance: float, batches: list[int], parts) -> dict:
    dit_t, vae_t, ours_parts = parts
    theirs = Theirs(dit_t, vae_t, sampler, guidance)
    ours = {
        dtype: cs.ClassSampler(
            *ours_parts,
            sampler=sampler,
            guidance=guidance,
            timesteps=timesteps_of(sampler),
            guided_channels=None,  # DiTPipeline guides every eps channel
            dtype=dtype,
        )
        for dtype in _DTYPES.value
    }
    labels = [207, 360]
    first = next(iter(ours.values()))
    x_T = np.asarray(first.noise(_CHECK_BATCH, jax.random.key(0)))
    theirs(labels, x_T)
    want = theirs.latents
    row = {"model": f"DiT-{model}/2", "sampler": sampler, "steps": STEPS[sampler]}
    row.update(guidance=guidance, max_rel_diff={}, images_per_s={})
    for dtype, sample in ours.items():
        got = np.asarray(sample.denoise(labels, x_T))
        row["max_rel_diff"][dtype] = float(np.abs(got - want).max() / max(np.ptp(want), 1e-12))
    for batch in batches:
        labels_b = [int(i) % 1000 for i in range(batch)]
        x_b = np.asarray(first.noise(batch, jax.random.key(1)))
        calls = {
            dtype: lambda s=sample, y=labels_b, x=x_b: jax.block_until_ready(
                s.decode(s.denoise(y, x), True)
            )
            for dtype, sample in ours.items()
        }
        calls["theirs"] = lambda y=labels_b, x=x_b: theirs(y, x)
        ms = alternating_medians(calls, _REPEATS.value, warmup=1)
        cell = {"theirs": round(1e3 * batch / ms["theirs"], 3)}
        for dtype in ours:
            cell[dtype] = round(1e3 * batch / ms[dtype], 3)
            cell[f"speedup_{dtype}"] = round(ms["theirs"] / ms[dtype], 3)
        row["images_per_s"][batch] = cell
        print(f"{row['model']} {sampler} g={guidance:g} batch {batch}: {cell}", flush=True)
    return row


def main(argv) -> None:
    del argv
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    batches = [int(b) for b in _BATCHES.value]
    rows = []
    for model in _MODELS.value:
        with tempfile.TemporaryDirectory() as folder:
            dit_t, vae_t = torch_parts(model, folder)
            ours = cs.load_parts(os.path.join(folder, "dit"), os.path.join(folder, "vae"))
            for sampler in _SAMPLERS.value:
                for guidance in (_GUIDANCE.value, 1.0):
                    rows.append(compare(model, sampler, guidance, batches, (dit_t, vae_t, ours)))
    dtypes = _DTYPES.value
    print(
        "| model | sampler | steps | guidance | max rel diff ("
        + ", ".join(dtypes)
        + ") | "
        + " | ".join(f"batch {b}: ours ({', '.join(dtypes)}) / theirs images/s" for b in batches)
        + " |"
    )
    print("|---" * (5 + len(batches)) + "|")
    for r in rows:
        diffs = ", ".join(f"{r['max_rel_diff'][d]:.1e}" for d in dtypes)
        cells = " | ".join(
            " / ".join(f"{v[d]:.3g} ({v[f'speedup_{d}']:.2f}×)" for d in dtypes)
            + f" / {v['theirs']:.3g}"
            for v in r["images_per_s"].values()
        )
        print(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['guidance']:g} "
            f"| {diffs} | {cells} |"
        )

    def smallest(values):
        values = list(values)
        return min(values) if values else None

    summary = {"rows": rows}
    for i, d in enumerate(dtypes):  # the first dtype's keys unsuffixed (float32 by default)
        suffix = "" if i == 0 else f"_{d}"
        summary[f"min_speedup_batch8{suffix}"] = smallest(
            r["images_per_s"][8][f"speedup_{d}"] for r in rows if 8 in r["images_per_s"]
        )
        summary[f"max_rel_diff{suffix}"] = max(r["max_rel_diff"][d] for r in rows)
    summary.update(load_avg=os.getloadavg()[0], **environment())
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
