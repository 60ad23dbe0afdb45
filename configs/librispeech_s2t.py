"""Speech→text on LibriSpeech at its real clip lengths, scored by WER on test-clean.

Clips are trimmed of silence, loudness-normalised and padded at the end to 35.2 s (not centre-cut):
the batch's "audio_mask" keeps the padded frames out of the tokenizer's loss and out of the DiT's
attention (data/padded_audio.py, stages/source_mask.py). A VQ-VAE tokenizes the 80-band log-mel
spectrogram (10 ms frames) into a 440 x 10 grid of codes (80 ms a time step), then a DiT writes the
transcript's UTF-8 bytes by masked diffusion, reading the codes' vectors through cross-attention.

Needs LibriSpeech prepared once with TFDS in the array_record format (tensorflow to prepare and to
read: pip install -e ".[tfds]"; docs/real-data.md):
  python -c "import tensorflow_datasets as tfds; tfds.builder('librispeech', file_format='array_record').download_and_prepare()"
Run (an accelerator host; sizes below; not run at this size here):
  python -m crossmodal_jax.main --config=configs/librispeech_s2t.py --workdir=runs/librispeech
All 960 h (train_clean100 + train_clean360 + train_other500):
  --config=configs/librispeech_s2t.py:960h
Transcribe a folder of .wav files (any rate; up to 35.2 s each) with the trained run:
  python -m crossmodal_jax.sample --workdir=runs/librispeech --input=FOLDER --output=OUT
Smoke variant for tests (tfds's own mock LibriSpeech, nothing prepared; seconds):
  --config=configs/librispeech_s2t.py:smoke
"""

import ml_collections

from crossmodal_jax.config import blocks

# 35.2 s at 16 kHz: 3520 frames of 10 ms, a multiple of the tokenizer's time stride 8. LibriSpeech's
# longest utterances: 34.955 s (test-clean), 29.735 s (all 960 h of training), as measured by
# PaddleSpeech's manifests (PaddlePaddle/PaddleSpeech, examples/librispeech, the "Data" table of
# its RESULTS.md); trimming only shortens them, so nothing is cut.
NUM_SAMPLES = 563200

# UTF-8 bytes of a transcript, the end token included. Assumed, not measured on the transcripts
# (they were not available here): test-clean holds 52,576 words (vectominist/MiniASR,
# egs/librispeech/README.md) in 5.4 h (Panayotov et al. 2015), 2.70 words/s; LibriSpeech's
# transcripts run ~5.6 bytes a word with its space (158 bytes / 28 words in test-clean's first,
# 1089-134686-0000): 15.2 bytes/s. So a 34.96 s utterance read at the average rate is ~530
# bytes, and 639 hold one read 20 % faster. Longer transcripts are cut (data/text.py) and
# their references too; benchmarks/librispeech_data.py --data_dir=... prints the real
# distribution and how many would be cut.
TEXT_MAX_LEN = 640

TRAIN_960H = "train_clean100+train_clean360+train_other500"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "speech2text"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # trained in order; a finished stage is restored

    # LibriSpeech through TFDS (data/tfds_sources.py): train_clean100 (28,539 utterances, 100.6 h)
    # / test_clean (2,620), transcripts lowercased, as UTF-8 bytes (any word).
    c.data = blocks.data("tfds", "audio", text_words="", text_max_len=TEXT_MAX_LEN)
    c.data.tfds_name = "librispeech"
    # The ASR front end: 25 ms windows every 10 ms, 80 mel bands up to 8 kHz.
    c.data.audio.update(num_samples=NUM_SAMPLES, n_fft=400, hop=160, n_mels=80, padding="end")
    # 28,539 padded spectrograms of 3520 x 80 float32 (1.1 MB each) would take 32 GB: computed by
    # grain workers as clips are read instead (docs/real-data.md gives their measured rate).
    c.data.audio.in_memory = False
    c.data.worker_count = 8

    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.update(blocks.sources())  # tokenizer_from, text_encoder: parts from elsewhere

    # Stage 1: VQ-VAE over [3520 frames, 80 mels, 1] -> a 440 x 10 grid of codes (8x on each axis:
    # 80 ms x 8 mel bands a code), 1024 codes of 8 dimensions; 10.9 M parameters. Its loss counts
    # the frames that hold sound only.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = blocks.tokenizer_model(
        channels=64,
        channel_mult=(1, 2, 2, 4),
        strides=((2, 2), (2, 2), (2, 2)),
        num_res_blocks=2,
        code_dim=8,
        num_codes=1024,
    )
    c.tokenizer.train = blocks.train(
        steps=50000, batch_size=64, learning_rate=2e-4, warmup_steps=1000, images_every=5000
    )
    c.tokenizer.adversarial = blocks.adversarial()  # off: a discriminator would read the padding

    # Stage 2: a DiT-B-sized TokenDiT (768 wide, 12 blocks, 12 heads; 166.9 M parameters with its
    # cross-attention sublayers) over the transcript's bytes, masked diffusion. The 10 mel codes of a time step are one condition token (cond_patch): 440
    # tokens of 80 features, padded ones masked out. Cross-attention: the 440 condition tokens do
    # not pay for the MLP in every block, as in-context ones would (conditioning.py). The adaLN
    # vector pools them by their masked mean (a map of all 35,200 features would be 27 M
    # parameters). Code ids computed once before training and kept in host memory (440 x 10 int32,
    # their mask and the caption: 40 KB an utterance; 1.1 GB for train_clean100, 11 GB for 960 h);
    # no code shift: real clips start at many offsets.
    c.generator = blocks.text_generator(
        TEXT_MAX_LEN,
        sample_overrides=dict(sampler="threshold", steps=64),
        steps=200000,
        batch_size=256,
        learning_rate=1e-4,
        warmup_steps=5000,
        ema_decay=0.9999,
        images_every=10000,
    )
    c.generator.model.update(
        hidden_size=768,
        depth=12,
        num_heads=12,
        conditioning="cross_attention",
        cond_patch=(1, 10),
        cond_mean_pool=True,
        dtype="bfloat16",  # accelerator compute; parameters stay float32
    )
    c.generator.precompute_codes = True
    c.generator.code_shift = (0, 0)

    c.eval = blocks.evaluation(batch_size=64, num_examples=0)  # all of test_clean: test_wer

    if arg == "960h":
        c.data.tfds_train_split = TRAIN_960H  # 281,241 utterances
    elif arg == "smoke":
        _smoke(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: 960h, smoke")
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    """The same path at toy size on tfds's own mock LibriSpeech (random clips of a few samples,
    random-letter transcripts): nothing to prepare, WER reported, not judged."""
    c.data.tfds_mock_examples = 16  # per split
    c.data.worker_count = 0
    # 4.1 s (256 frames of 16 ms, 16 mel bands): longer than the embedded speech configs' clips.
    c.data.text_max_len = 32
    c.data.audio.update(num_samples=65536, n_fft=512, hop=256, n_mels=16)
    blocks.text_task_smoke(c)  # tiny models, 6 steps a stage, 16 test examples
    c.tokenizer.model.num_res_blocks = 1
    c.generator.model.cond_patch = (1, 2)  # 32 x 2 codes -> 32 tokens
    c.generator.model.dtype = "float32"  # CPUs emulate bfloat16
    c.generator.sample.steps = 4
    c.eval.batch_size = 8  # the summaries' batch: evaluation reuses their compiled sampler
