"""Text→image on MS-COCO at 256×256: a cross-attention DiT-B/2 over SD-VAE latents, conditioned on a
frozen T5 encoder's hidden states of the caption.

Choices (docs/real-data.md says why): SD-VAE latents (32×32×4, encoded once into shards) rather
than VQGAN codes, because Gaussian diffusion over them is the recipe whose COCO-256 FIDs are
published (U-ViT, DiT-style models); T5 v1.1 base's encoder (768 wide) rather than PixArt's T5-XXL,
whose 4.7 B parameters would run in every step (it is one --config.text_encoder= away);
cross-attention, which beat in-context conditioning on the shapes world's captions (results.md).
No flips: COCO captions say "left" and "right".

Prepare COCO captions with TFDS and fetch the parts once (docs/real-data.md), then:
  python -m crossmodal_jax.main --config=configs/coco256_t2i.py --workdir=runs/coco256 \
      --config.tokenizer_from=/data/sd-vae-ft-ema --config.text_encoder=/data/t5-v1_1-base
FID-30K on the val split's captions (the zero-shot COCO protocol) with eval.inception_weights set.
Smoke variant (here, in seconds: TFDS's mock COCO, tiny random-weight VAE and T5):
  python -m crossmodal_jax.main --config=configs/coco256_t2i.py:smoke --workdir=/tmp/coco
"""

import ml_collections

from crossmodal_jax.config import blocks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = (arg or "").split(",")
    c = ml_collections.ConfigDict()
    c.task = "text2image"
    c.seed = 0
    c.stages = ("tokenizer", "generator")  # the tokenizer is tokenizer_from's: not trained here

    # Karpathy's train split (82,783 images; the first of each image's captions), val for tests;
    # ADM's centre crop to 256×256. Captions in T5 tokens, 64 with the end token (COCO captions
    # are 10-20 words).
    c.data = blocks.data("tfds", "image", text_max_len=64, worker_count=16)
    blocks.tfds_data(
        c.data, "image", tfds_name="coco_captions", image_size=256, channels=3, center_crop=True
    )
    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())
    c.update(blocks.sources())
    c.tokenizer_from = "sd-vae-ft-ema"  # a diffusers AutoencoderKL folder: 256² -> 32×32×4
    c.text_encoder = "t5-v1_1-base"  # a transformers T5 (encoder) folder with its tokenizer
    c.tokenizer = blocks.shapes_tokenizer()  # unused with tokenizer_from; the schema's block

    c.generator = blocks.generator(
        "gaussian",
        model=dict(
            preset="B", patch_size=2, conditioning="cross_attention", dtype="bfloat16", remat=True
        ),
        diffusion_overrides=dict(schedule="linear", prediction="eps", cond_drop=0.1),
        sample_overrides=dict(sampler="dpmpp_2m", steps=25, guidance=3.0),
        train_overrides=dict(
            steps=400_000,
            batch_size=256,
            learning_rate=1e-4,
            warmup_steps=5000,
            end_lr_fraction=1.0,
            weight_decay=0.03,
            b2=0.999,
            ema_decay=0.9999,
            log_every=100,
            images_every=50_000,
            checkpoint_every=10_000,
        ),
    )
    c.generator.latents.update(precompute=True, flip=False, shard_size=4096, batch_size=256)

    c.eval = blocks.evaluation(
        prompts=(
            "a red double decker bus driving down a street",
            "a plate of food with broccoli and rice",
            "a cat sitting on a laptop keyboard",
            "a man riding a wave on top of a surfboard",
        ),
        num_examples=5000,
        # FID-30K (captions of the val split dealt i mod 5,000) with eval.inception_weights set;
        # the reference statistics are the val images' ("" = computed from the split).
        num_samples=30_000,
        batch_size=256,
        samples_per_prompt=4,
    )

    if "smoke" in variants:
        c.data.update(tfds_mock_examples=32, image_size=32, text_max_len=16, worker_count=0)
        c.tokenizer_from, c.text_encoder = "random:vae", "random:t5"
        c.generator.model.update(preset="", hidden_size=32, depth=1, num_heads=2)
        c.generator.model.update(dtype="float32", remat=False)
        c.generator.diffusion.timesteps = 50
        c.generator.sample.steps = 4
        c.generator.latents.update(shard_size=16, batch_size=16)
        c.eval.update(num_examples=16, batch_size=16, samples_per_prompt=1)
        c.eval.update(num_samples=16, inception_weights="random:inception")
        c.eval.prompts = ("a red photo", "the blue square")
        blocks.smoke_train(c.generator)
    unknown = set(variants) - {"", "smoke"}
    if unknown:
        raise ValueError(f"unknown config variant {sorted(unknown)}; available: smoke")
    return c
