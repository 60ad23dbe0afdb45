"""Speech→text on the embedded `spoken_digits`: a VQ-VAE tokenizes log-mel spectrograms (treated as
one-channel images, time x mel), then a DiT writes the transcript by masked diffusion over its
words, conditioned on the spectrogram's codes.

Needs espeak-ng to build the dataset once (`make install-system-deps`, or apt-get install espeak-ng).
Run (≈10 minutes on 2 CPU cores; README "Where the X→text defaults stand"):
  python -m crossmodal_jax.main --config=configs/speech2txt.py --workdir=runs/speech2txt
Transcribe a folder of .wav files (any sample rate) with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/speech2txt --input=FOLDER --output=OUT
Smoke variant for tests (seconds): --config=configs/speech2txt.py:smoke
"""

import ml_collections

from crossmodal_jax import config_lib, data
from crossmodal_jax.data import text


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "speech2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    c.data = ml_collections.ConfigDict()
    c.data.name = "spoken_digits"  # embedded dataset (see crossmodal_jax/data/sources.py)
    c.data.data_dir = ""  # dataset cache; "" = $CROSSMODAL_DATA_DIR or ~/.cache/crossmodal_jax
    # Caption tokenizer: one token per word of this vocabulary ("" = UTF-8 bytes, any text). The
    # captions here use a few words only; bytes would also make the DiT place every letter, and
    # misspelled words were over half of speech→text's byte-level errors (README "Image→text, ...").
    c.data.text_words = text.caption_words(data.NUMBER_WORDS)
    c.data.text_max_len = 5  # transcript length in tokens (4 words + end token)
    c.data.worker_count = 0  # grain worker processes (0 = in the main process)
    # Log-mel features (data/features.py): silence trimmed, loudness normalised, then padded/cut.
    c.data.audio = ml_collections.ConfigDict()
    c.data.audio.num_samples = 40960  # 2.56 s at 16 kHz (the longest utterance trims to ~2.3 s)
    c.data.audio.n_fft = 512  # STFT window (32 ms)
    c.data.audio.hop = 256  # STFT hop (16 ms): 160 frames
    c.data.audio.n_mels = 32  # mel bands
    c.data.audio.fmin = 20.0  # lowest mel band edge (Hz)
    c.data.audio.fmax = 8000.0  # highest mel band edge (Hz)

    config_lib.folder_data(c.data, "audio")  # keys of data.name="folder" (user data)
    config_lib.tfds_data(c.data, "audio")  # keys of data.name="tfds" (prepared TFDS datasets)

    c.mesh = config_lib.mesh()

    # Stage 1: VQ-VAE over [160 frames, 32 mels, 1] -> a 20 x 4 grid of codes.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = config_lib.tokenizer_model(
        channels=16,
        channel_mult=(1, 2, 2, 4),
        strides=((2, 2), (2, 2), (2, 2)),
        code_dim=8,
        num_codes=256,
    )
    c.tokenizer.train = config_lib.train(
        steps=500, batch_size=16, learning_rate=2e-3, warmup_steps=50, images_every=250
    )

    # Stage 2: DiT over transcript words, masked diffusion, attending to the 80 audio codes grouped
    # into 20 tokens, one per time step (cond_patch). The codes are computed once before training
    # (precompute_codes); each clip's code grid is moved by up to 1 time step (8 frames, 128 ms).
    c.generator = config_lib.text_generator(c.data.text_max_len, steps=3000, ema_decay=0.998)
    c.generator.model.cond_patch = (1, 4)
    c.generator.precompute_codes = True
    c.generator.code_shift = (1, 0)

    c.eval = config_lib.evaluation(batch_size=128, num_examples=0)

    if arg == "smoke":
        c.data.name = "spoken_digits_smoke"  # same recipe, 64 + 32 utterances: builds in seconds
        config_lib.text_task_smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
