"""Class-conditional ImageNet 256×256: DiT-XL/2 over SD-VAE latents, the DiT paper's recipe
(Peebles & Xie 2023): AdamW 1e-4, no weight decay, global batch 256, EMA 0.9999, 400 K steps,
horizontal flips, a linear β schedule over 1,000 steps, class dropout 0.1 for guidance.

Prepare ImageNet with TFDS and fetch the SD-VAE once (docs/real-data.md), then on a pod or a
multi-GPU host (launch/):
  python -m crossmodal_jax.main --config=configs/imagenet256.py --workdir=runs/imagenet256 \
      --config.tokenizer_from=/data/sd-vae-ft-ema --config.data.data_dir=/data/tensorflow_datasets
The images are encoded once into latent shards (generator.latents, over every device and process)
before the DiT trains; FID-50K is evaluated at the end when eval.inception_weights is set.
Samplers (guidance 1.5, the paper's FID 2.27 setting): DPM-Solver++(2M) in 25 steps by default;
:ddpm250 is the paper's 250-step ancestral sampler (DDIM with eta 1 on 250 steps); :noguidance
samples at guidance 1 (the paper's FID 9.62 row).
Smoke variant (here, in seconds: TFDS's mock ImageNet, a tiny random-weight VAE):
  python -m crossmodal_jax.main --config=configs/imagenet256.py:smoke --workdir=/tmp/in256
"""

import ml_collections

from crossmodal_jax.config import blocks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = (arg or "").split(",")
    c = ml_collections.ConfigDict()
    c.task = "text2image"  # source→target: the "caption" is the class (data.text_classes)
    c.seed = 0
    c.stages = ("tokenizer", "generator")  # the tokenizer is tokenizer_from's: not trained here

    # ILSVRC-2012 train (1,281,167 images), ADM's centre crop to 256×256; each caption is the
    # class's WordNet id, which conditions the DiT as a class label (1,000 classes).
    c.data = blocks.data("tfds", "image", text_max_len=1, text_classes=True, worker_count=16)
    blocks.tfds_data(
        c.data, "image", tfds_name="imagenet2012", image_size=256, channels=3, center_crop=True
    )
    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())
    c.update(blocks.sources())
    # The SD-VAE (stabilityai/sd-vae-ft-ema or -mse, a diffusers folder): 256×256 -> 32×32×4.
    c.tokenizer_from = "sd-vae-ft-ema"
    c.tokenizer = blocks.shapes_tokenizer()  # unused with tokenizer_from; the schema's block

    c.generator = blocks.generator(
        "gaussian",
        # bfloat16 compute (float32 weights and optimizer), rematerialised blocks: the memory
        # plan of benchmarks/scale_plan.py's dit_xl2 row.
        model=dict(preset="XL", patch_size=2, dtype="bfloat16", remat=True),
        diffusion_overrides=dict(schedule="linear", prediction="eps", cond_drop=0.1),
        sample_overrides=dict(sampler="dpmpp_2m", steps=25, guidance=1.5),
        train_overrides=dict(
            steps=400_000,
            batch_size=256,
            learning_rate=1e-4,
            warmup_steps=0,
            end_lr_fraction=1.0,  # constant
            weight_decay=0.0,
            b2=0.999,  # torch.optim.AdamW's default, which the paper used
            grad_clip=0.0,  # the paper clips nothing
            ema_decay=0.9999,
            log_every=100,
            images_every=50_000,
            checkpoint_every=10_000,
        ),
    )
    # Encode the 1.28 M images once (and their flips): 2 × 32×32×4 float16 latents an image.
    c.generator.latents.update(precompute=True, shard_size=4096, batch_size=256)

    # FID-50K and Inception Score of 50,000 samples (classes dealt i mod 1000) against ADM's
    # reference batch: set eval.inception_weights (pytorch-fid's pt_inception-2015-12-05 .pth)
    # and eval.reference_stats (VIRTUAL_imagenet256_labeled.npz) to evaluate them.
    c.eval = blocks.evaluation(
        prompts=("207", "360", "387", "974", "88", "979", "417", "279"),  # DiT's sample classes
        num_examples=10_000,
        num_samples=50_000,
        batch_size=256,
        samples_per_prompt=4,
        classifier_examples=0,
    )

    if "ddpm250" in variants:
        c.generator.sample.update(sampler="ddim", steps=250, eta=1.0)
    if "noguidance" in variants:
        c.generator.sample.guidance = 1.0
    if "smoke" in variants:
        c.data.update(tfds_mock_examples=48, image_size=32, worker_count=0)
        c.tokenizer_from = "random:vae"  # 32×32 -> 8×8×4 latents
        c.generator.model.update(preset="", hidden_size=32, depth=1, num_heads=2, dtype="float32")
        c.generator.model.remat = False
        c.generator.diffusion.timesteps = 50
        c.generator.sample.steps = 4
        c.generator.latents.update(shard_size=16, batch_size=16)
        c.eval.update(num_examples=16, batch_size=16, samples_per_prompt=1, prompts=("0", "1"))
        # FID and IS through the full-size path: random Inception weights, reference statistics
        # of the test split's real images.
        c.eval.update(classifier_examples=48, num_samples=16, inception_weights="random:inception")
        blocks.smoke_train(c.generator)
    unknown = set(variants) - {"", "smoke", "ddpm250", "noguidance"}
    if unknown:
        raise ValueError(
            f"unknown config variant {sorted(unknown)}; available: smoke, ddpm250, noguidance"
        )
    return c
