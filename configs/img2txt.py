"""Image→text on the embedded `digits`: a VQ-VAE tokenizer of the images, then a DiT that writes the
caption by masked (absorbing-state) diffusion over its words, conditioned on the image's codes.

Run (≈10 minutes on 2 CPU cores; docs/results.md):
  python -m crossmodal_jax.main --config=configs/img2txt.py --workdir=runs/img2txt
Caption a folder of .png files with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/img2txt --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/img2txt.py:smoke
"""

import ml_collections

from crossmodal_jax import data
from crossmodal_jax.config import blocks
from crossmodal_jax.data import text


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "image2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # Captions as words of their few-word vocabulary (docs/results.md: why not bytes), up to 7
    # words + the end token.
    words = text.caption_words(
        t.format(word=w) for t in data.CAPTION_TEMPLATES for w in data.NUMBER_WORDS
    )
    c.data = blocks.data("digits", "image", text_words=words, text_max_len=8)

    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over 8x8 images -> an 8x8 grid of codes (the generator's condition), no
    # downsampling (docs/results.md).
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = blocks.tokenizer_model(channels=32, channel_mult=(1,), code_dim=8)
    c.tokenizer.train = blocks.train(
        steps=1500, batch_size=32, learning_rate=2e-3, warmup_steps=100, images_every=500
    )
    c.tokenizer.adversarial = blocks.adversarial()  # off (weight 0)

    # Stage 2: DiT over caption words, masked diffusion, attending to the 64 image codes grouped
    # 2x2 into 16 tokens (cond_patch).
    # Decoded by confidence-threshold parallel decoding in at most 6 steps for the 8 tokens: 4.3
    # model calls a caption on average, at MaskGIT's 8-step exact match (95.3 %; results.md).
    c.generator = blocks.text_generator(
        c.data.text_max_len,
        sample_overrides=dict(sampler="threshold", steps=6),
        steps=5000,
        ema_decay=0.999,
        warmup_steps=200,
        images_every=1000,
    )
    c.generator.model.cond_patch = (2, 2)
    # The code vectors reach the adaLN vector through a GELU MLP rather than a linear map.
    c.generator.model.cond_pool_hidden = 256
    # 1500 training images are easily memorised: each is moved by up to 1 pixel, rotated by up
    # to 10 degrees and scaled by up to 10 % in the step.
    c.generator.source_shift = (1, 1)
    c.generator.source_affine = (10.0, 0.1)

    c.eval = blocks.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        blocks.text_task_smoke(c, num_examples=32)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
