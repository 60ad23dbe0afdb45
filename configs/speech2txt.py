"""Speech→text on the embedded `spoken_digits`: a VQ-VAE tokenizes log-mel spectrograms (treated as
one-channel images, time x mel), then a DiT writes the transcript by masked diffusion over its
words, conditioned on the spectrogram's codes.

Needs espeak-ng to build the dataset once (`make install-system-deps`, or apt-get install espeak-ng).
Run (≈10 minutes on 2 CPU cores; docs/results.md):
  python -m crossmodal_jax.main --config=configs/speech2txt.py --workdir=runs/speech2txt
Transcribe a folder of .wav files (any sample rate) with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/speech2txt --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/speech2txt.py:smoke
"""

import ml_collections

from crossmodal_jax import data
from crossmodal_jax.config import blocks
from crossmodal_jax.data import text


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "speech2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # Transcripts as digit words (up to 4 + the end token); clips of 2.56 s at 16 kHz (the
    # longest utterance trims to ~2.3 s): 160 log-mel frames.
    c.data = blocks.data(
        "spoken_digits", "audio", text_words=text.caption_words(data.NUMBER_WORDS), text_max_len=5
    )
    c.data.audio.num_samples = 40960

    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over [160 frames, 32 mels, 1] -> a 20 x 4 grid of codes.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = blocks.tokenizer_model(
        channels=16,
        channel_mult=(1, 2, 2, 4),
        strides=((2, 2), (2, 2), (2, 2)),
        code_dim=8,
        num_codes=256,
    )
    c.tokenizer.train = blocks.train(
        steps=500, batch_size=16, learning_rate=2e-3, warmup_steps=50, images_every=250
    )
    c.tokenizer.adversarial = blocks.adversarial()  # off (weight 0)

    # Stage 2: DiT over transcript words, masked diffusion, attending to the 80 audio codes grouped
    # into 20 tokens, one per time step (cond_patch). The codes are computed once before training
    # (precompute_codes); each clip's code grid is moved by up to 1 time step (8 frames, 128 ms).
    # Decoded by confidence-threshold parallel decoding in at most 3 steps for the 5 tokens: 1.25
    # model calls a transcript on average, at MaskGIT's 5-step WER or better (results.md).
    c.generator = blocks.text_generator(
        c.data.text_max_len,
        sample_overrides=dict(sampler="threshold", steps=3),
        steps=3000,
        ema_decay=0.998,
    )
    c.generator.model.cond_patch = (1, 4)
    c.generator.precompute_codes = True
    c.generator.code_shift = (1, 0)

    c.eval = blocks.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        c.data.name = "spoken_digits_smoke"  # same recipe, 64 + 32 utterances: builds in seconds
        blocks.text_task_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
