"""Video→text on the embedded `moving_digits`: a VQ-VAE with spatial and temporal downsampling
tokenizes the 8-frame clips, then a DiT writes `the digit <word> moves <direction>` by masked
diffusion over the caption's words, conditioned on the clip's codes.

Run (≈10–12 minutes on 2 CPU cores; docs/results.md):
  python -m crossmodal_jax.main --config=configs/video2txt.py --workdir=runs/video2txt
Caption a folder of .gif / .npy clips with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/video2txt --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/video2txt.py:smoke
"""

import ml_collections

from crossmodal_jax import data
from crossmodal_jax.config import blocks
from crossmodal_jax.data import text


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "video2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # Captions as words (up to 5 + the end token). Frames pooled from 32x32 to 16x16: the digit
    # is an 8x8 image upscaled 2x, so this loses little and makes the tokenizer 4x cheaper.
    words = text.caption_words(
        data.moving_digits.caption(label, d)
        for label in range(len(data.NUMBER_WORDS))
        for d in range(len(data.moving_digits.DIRECTIONS))
    )
    c.data = blocks.data("moving_digits", "video", text_words=words, text_max_len=6, frame_size=16)

    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over [8, 16, 16, 1] clips -> an 8x16x16 grid of codes, one per pixel of
    # every (pooled) frame: coarser grids cap the caption (docs/results.md).
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = blocks.tokenizer_model(
        channels=16,
        channel_mult=(1,),
        strides=(),
        code_dim=8,
        num_codes=256,
    )
    c.tokenizer.train = blocks.train(
        steps=500, batch_size=16, learning_rate=2e-3, warmup_steps=50, images_every=250
    )
    c.tokenizer.adversarial = blocks.adversarial()  # off (weight 0)

    # Stage 2: DiT over caption words, masked diffusion. It reads the clip's codes through a conv
    # stem (models/condition_stem.py): (2+1)-D convs whose first layer halves height and width;
    # their max/mean over the grid (the same wherever the digit is) modulate the DiT, and their
    # 8x8x8 features, grouped 8x2x2, are its 16 condition tokens. The codes are computed once
    # before training (precompute_codes); each clip's code grid is moved by up to 1 code (1
    # pooled pixel) in H and W.
    # Decoded by confidence-threshold parallel decoding in at most 3 steps for the 6 tokens: 1.09
    # model calls a caption on average, at MaskGIT's 6-step exact match (92.2 %; results.md).
    c.generator = blocks.text_generator(
        c.data.text_max_len,
        sample_overrides=dict(sampler="threshold", steps=3),
        steps=3500,
        ema_decay=0.998,
    )
    c.generator.model.cond_conv = (32, 64)
    c.generator.model.cond_conv_kernel = (3, 3, 3)
    c.generator.model.cond_conv_stride = (1, 2, 2)
    c.generator.model.cond_patch = (8, 2, 2)
    c.generator.precompute_codes = True
    c.generator.code_shift = (0, 1, 1)

    c.eval = blocks.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        blocks.text_task_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
