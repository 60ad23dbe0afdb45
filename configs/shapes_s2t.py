"""Speech→text on the embedded `spoken_shapes`: shapes-world captions read by espeak-ng. A VQ-VAE
tokenizes log-mel spectrograms (time × mel, one channel), then a DiT writes the transcript by
masked diffusion over the caption's words, conditioned on the spectrogram's codes. Test and novel
utterances are spoken by voices never trained on (m5 m7 f3 f4).

Needs espeak-ng to build the dataset once (`make install-system-deps`, or apt-get install espeak-ng).
Run (docs/results.md gives its time and scores):
  python -m crossmodal_jax.main --config=configs/shapes_s2t.py --workdir=runs/shapes_s2t
Transcribe a folder of .wav files (any sample rate) with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/shapes_s2t --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/shapes_s2t.py:smoke
"""

import ml_collections

from crossmodal_jax.config import blocks
from crossmodal_jax.evaluation import shapes_judge


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "speech2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # Transcripts as words (up to 8 + the end token); clips of 3.58 s at 16 kHz (the longest
    # utterance trims to 3.37 s): 224 log-mel frames.
    words = " ".join(shapes_judge.caption_words())
    c.data = blocks.data("spoken_shapes", "audio", text_words=words, text_max_len=9)
    c.data.audio.num_samples = 57344

    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over [224 frames, 32 mels, 1] -> a 28 × 4 grid of codes, as
    # configs/speech2txt.py.
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

    # Stage 2: DiT over transcript words, masked diffusion, attending to the 112 audio codes
    # grouped into 28 tokens, one per time step (cond_patch); codes computed once, the grid moved
    # by up to 1 time step (128 ms).
    # Decoded by confidence-threshold parallel decoding in at most 3 steps for the 9 tokens: 1.25
    # DiT calls a caption, test/novel exact match 87.6 % / 69.8 % against MaskGIT-9's 87.4 % /
    # 69.2 % (results.md, "The 2026 recipe side by side").
    c.generator = blocks.text_generator(
        c.data.text_max_len,
        steps=3000,
        ema_decay=0.998,
        sample_overrides=dict(sampler="threshold", steps=3),
    )
    c.generator.model.cond_patch = (1, 4)
    c.generator.precompute_codes = True
    c.generator.code_shift = (1, 0)

    c.eval = blocks.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        c.data.name = "spoken_shapes_smoke"  # same recipe, 64 + 32 + 32 utterances
        blocks.text_task_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
