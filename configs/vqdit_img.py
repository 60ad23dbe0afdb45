"""Text→image on the embedded `digits`: a VQ-VAE tokenizer, then a text-conditioned DiT over its latents.

Run (the embedded default: ≈11 minutes on 2 CPU cores; docs/results.md):
  python -m crossmodal_jax.main --config=configs/vqdit_img.py --workdir=runs/vqdit_img
Masked (discrete) diffusion over the VQ ids instead of Gaussian diffusion over the latents:
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:masked --workdir=runs/vqdit_img_masked
Rectified flow over the same latents instead (velocity target, Heun ODE sampler):
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:flow --workdir=runs/vqdit_img_flow
Another quantizer (fsq | lfq | rvq | rotation: blocks.QUANTIZER_VARIANTS), with any process:
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:fsq --workdir=runs/vqdit_img_fsq
Smoke variant for tests (seconds):
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:smoke --workdir=/tmp/smoke
Override any field from the command line, e.g. --config.generator.train.steps=100.
"""

import ml_collections

from crossmodal_jax.config import blocks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = (arg or "").split(",")
    processes = [p for p in ("masked", "flow") if p in variants] or ["gaussian"]
    if len(processes) > 1:
        raise ValueError("config variants masked and flow exclude each other; choose one")
    process = processes[0]
    c = ml_collections.ConfigDict()
    c.task = "text2image"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # Captions as UTF-8 bytes (prompts may be any text), up to 31 bytes + the end token.
    c.data = blocks.data("digits", "image", text_max_len=32)
    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over 8x8 images -> 4x4 grid of codes.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = blocks.tokenizer_model(channels=32, channel_mult=(1, 2), code_dim=8)
    c.tokenizer.train = blocks.train(
        steps=2000, batch_size=32, learning_rate=2e-3, warmup_steps=100, images_every=1000
    )
    c.tokenizer.adversarial = blocks.adversarial()  # off (weight 0)

    # Stage 2: DiT over the (quantized) latents or their ids, conditioned on the caption bytes.
    c.generator = blocks.generator(
        process,
        model=dict(hidden_size=64, depth=4, num_heads=4),
        diffusion_overrides=dict(cond_drop=0.1),
        # Gaussian: DPM-Solver++(2M) in 16 steps, guided (1.75) only over the noisier 40 % of the
        # chain, where the digit is decided: DDIM-50's accuracy at a third of its DiT calls, with
        # samples as varied as FD 4.8 (6,000 training steps; results.md, "The 2026 recipe").
        # Flow: Heun, 8 steps of 2 calls.
        sample_overrides={
            "gaussian": dict(
                sampler="dpmpp_2m", steps=16, guidance=1.75, guidance_interval=(0.6, 1.0)
            ),
            "masked": dict(steps=16),
            "flow": dict(steps=8),
        }[process],
        train_overrides=dict(
            # Gaussian: 3,000 steps drew right digits too, but less varied ones (FD 6.3, not 4.8);
            # the masked and flow variants keep the 3,000 they were measured at.
            steps=6000 if process == "gaussian" else 3000,
            batch_size=32,
            learning_rate=1e-3,
            warmup_steps=200,
            ema_decay=0.999,
            images_every=1000,
        ),
    )

    # Prompts shown in sample grids; the digit accuracy uses "the digit <word>" for all ten digits.
    c.eval = blocks.evaluation(
        prompts=("the digit zero", "the digit three", "a handwritten seven", "the digit nine")
    )

    variants = blocks.quantizer_variant(c.tokenizer.model, variants)

    if "smoke" in variants:
        c.tokenizer.model.channels = 16
        c.tokenizer.model.num_codes = 32
        c.generator.model.update(hidden_size=32, depth=1, num_heads=2)
        c.generator.diffusion.timesteps = 50
        c.generator.sample.steps = 4
        c.eval.samples_per_prompt = 2
        c.eval.update(num_examples=32, batch_size=32)  # distribution metrics of 32 test images
        blocks.smoke_train(c.tokenizer)
        blocks.smoke_train(c.generator)
    unknown = set(variants) - {"", "smoke", "masked", "flow"}
    if unknown:
        choices = ", ".join(["smoke", "masked", "flow", *blocks.QUANTIZER_VARIANTS])
        raise ValueError(f"unknown config variant {sorted(unknown)}; available: {choices}")
    return c
