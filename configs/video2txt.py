"""Video→text on the embedded `moving_digits`: a VQ-VAE with spatial and temporal downsampling
tokenizes the 8-frame clips, then a DiT writes `the digit <word> moves <direction>` by masked
diffusion over the caption's words, conditioned on the clip's codes.

Run (≈12 minutes on 2 CPU cores; README "Where the X→text defaults stand"):
  python -m crossmodal_jax.main --config=configs/video2txt.py --workdir=runs/video2txt
Caption a folder of .gif / .npy clips with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/video2txt --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/video2txt.py:smoke
"""

import ml_collections

from crossmodal_jax import config_lib, data
from crossmodal_jax.data import text


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "video2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    c.data = ml_collections.ConfigDict()
    c.data.name = "moving_digits"  # embedded dataset (see crossmodal_jax/data/sources.py)
    c.data.data_dir = ""  # dataset cache; "" = $CROSSMODAL_DATA_DIR or ~/.cache/crossmodal_jax
    # Caption tokenizer: one token per word of this vocabulary ("" = UTF-8 bytes, any text). The
    # captions here use a few words only; bytes would also make the DiT place every letter, and
    # misspelled words were over half of speech→text's byte-level errors (README "Image→text, ...").
    c.data.text_words = text.caption_words(
        data.moving_digits.caption(label, d)
        for label in range(len(data.NUMBER_WORDS))
        for d in range(len(data.moving_digits.DIRECTIONS))
    )
    c.data.text_max_len = 6  # caption length in tokens (5 words + end token)
    # Frames mean-pooled from 32x32 to this size before the tokenizer (0 = keep): the digit is an
    # 8x8 image upscaled 2x, so 16x16 loses little and makes the tokenizer 4x cheaper.
    c.data.frame_size = 16
    c.data.worker_count = 0  # grain worker processes (0 = in the main process)

    config_lib.folder_data(c.data, "video")  # keys of data.name="folder" (user data)
    config_lib.tfds_data(c.data, "video")  # keys of data.name="tfds" (prepared TFDS datasets)

    c.mesh = config_lib.mesh()

    # Stage 1: VQ-VAE over [8, 16, 16, 1] clips -> an 8x16x16 grid of codes, one per pixel of
    # every (pooled) frame. The tokenizer can pool time and space (tokenizer.model.strides, e.g.
    # ((2, 2, 2), (2, 1, 1)) -> 2x8x8), but what the codes then keep of a moving 8x8 digit caps
    # the caption: exact 75.6 % on 2x8x8 codes, 90.4 % on 8x8x8, 92.2 % on 8x16x16 (README
    # "Where the X→text defaults stand"). A grid this fine costs about what the 8x8x8 one did.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = config_lib.tokenizer_model(
        channels=16,
        channel_mult=(1,),
        strides=(),
        code_dim=8,
        num_codes=256,
    )
    c.tokenizer.train = config_lib.train(
        steps=500, batch_size=16, learning_rate=2e-3, warmup_steps=50, images_every=250
    )

    # Stage 2: DiT over caption words, masked diffusion. It reads the clip's codes through a conv
    # stem (models/condition_stem.py): (2+1)-D convs whose first layer halves height and width;
    # their max/mean over the grid (the same wherever the digit is) modulate the DiT, and their
    # 8x8x8 features, grouped 8x2x2, are its 16 condition tokens. The codes are computed once
    # before training (precompute_codes); each clip's code grid is moved by up to 1 code (1
    # pooled pixel) in H and W.
    c.generator = config_lib.text_generator(c.data.text_max_len, steps=3500, ema_decay=0.998)
    c.generator.model.cond_conv = (32, 64)
    c.generator.model.cond_conv_kernel = (3, 3, 3)
    c.generator.model.cond_conv_stride = (1, 2, 2)
    c.generator.model.cond_patch = (8, 2, 2)
    c.generator.precompute_codes = True
    c.generator.code_shift = (0, 1, 1)

    c.eval = config_lib.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        config_lib.text_task_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
