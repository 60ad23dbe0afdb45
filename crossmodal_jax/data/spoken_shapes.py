"""The embedded `spoken_shapes` dataset (DESIGN §4 contract): the shapes world's captions, spoken.

Utterance i of a split reads the caption of `shapes` scene i of the same split, synthesized as
`spoken_digits` is (data/spoken_digits.py: the same espeak-ng command, speeds 130–190, pitches
30–70, 16 kHz mono, white noise at 20–40 dB SNR of the speech span). Voices: train m1 m2 m3 m4 f1
f2; test and novel m5 m7 f3 f4. Transcript: the caption. `novel` utterances name a held-out
(colour, shape) pair, as their scenes hold one.
"""

from __future__ import annotations

import tempfile
from multiprocessing.pool import ThreadPool

import numpy as np

from crossmodal_jax.data import shapes, spoken_digits

NAME = "spoken_shapes"
VERSION = "1.0.0"
SPLITS = shapes.SPLITS
VOICES = {"train": spoken_digits.VARIANTS["train"], "test": spoken_digits.VARIANTS["test"]}
VOICES["novel"] = VOICES["test"]
# Sized so a build takes a few minutes on 2 cores (espeak-ng is most of it).
SPLIT_SIZES = {"train": 8000, "test": 1000, "novel": 500}
_SEED = 20261204


def utterance(split: str, index: int) -> spoken_digits.Utterance:
    """The draws of record `index` of `split`: the caption of shapes scene (split, index), voice,
    speed, pitch, SNR and noise seed."""
    shapes.check_split(NAME, split)
    k = SPLITS.index(split)
    rng = np.random.default_rng([_SEED, k, index])
    voices = VOICES[split]
    return spoken_digits.Utterance(
        text=shapes.example(split, index)["caption"].decode("utf-8"),
        variant=voices[int(rng.integers(len(voices)))],
        speed=int(rng.integers(spoken_digits.SPEED_RANGE[0], spoken_digits.SPEED_RANGE[1] + 1)),
        pitch=int(rng.integers(spoken_digits.PITCH_RANGE[0], spoken_digits.PITCH_RANGE[1] + 1)),
        snr_db=float(rng.uniform(*spoken_digits.SNR_DB_RANGE)),
        noise_seed=(_SEED, k, index, 1),
    )


def generate_split(split: str, count: int | None = None, workers: int | None = None) -> list[dict]:
    """Records 0 .. count-1 of `split` in order (`count` defaults to the whole split): {"audio":
    int16 [T] at 16 kHz, "caption": bytes, "variant": bytes, "num_words": int32}."""
    shapes.check_split(NAME, split)
    count = SPLIT_SIZES[split] if count is None else int(count)
    binary = spoken_digits.espeak_binary()
    utterances = [utterance(split, i) for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="spoken_shapes-") as workdir:

        def build(u: spoken_digits.Utterance) -> dict:
            return spoken_digits.make_record(u, spoken_digits.synthesize(u, workdir, binary))

        with ThreadPool(workers or spoken_digits.default_workers()) as pool:
            return list(pool.imap(build, utterances, chunksize=8))


# `spoken_shapes_smoke`: the first records of each split, for smoke configs and tests.
SMOKE_NAME = "spoken_shapes_smoke"
SMOKE_SPLIT_SIZES = {"train": 64, "test": 32, "novel": 32}


def generate_smoke_split(split: str) -> list[dict]:
    return generate_split(split, count=SMOKE_SPLIT_SIZES.get(split))
