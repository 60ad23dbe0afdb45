"""The embedded ``digits`` dataset (DESIGN §4 contract): scikit-learn's 8x8 handwritten digits.

No download: ``load_digits`` ships with scikit-learn. Test split = indices 1500..1796, never trained
on; train split = 0..1499. Every caption names the digit as a word, and one template is exactly
``the digit <word>``. Generation here is pure and deterministic; caching as ArrayRecord lives in
``sources.py`` so later embedded datasets share it.
"""

import numpy as np

NAME = "digits"
# Bump when the records change: the cache directory is keyed by it, so old caches are never reused.
VERSION = "1.0.0"
TEST_START = 1500
NUM_EXAMPLES = 1797
SPLITS = ("train", "test")
# sklearn gives ink intensity 0..16 (16 = full ink); pipelines scale by this.
IMAGE_MAX_VALUE = 16

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Template 0 is the contract caption; evaluation prompts use it.
CAPTION_TEMPLATES = (
    "the digit {word}",
    "a handwritten {word}",
    "an image of the number {word}",
    "the number {word} written by hand",
    "a small picture of the number {word}",
)
# Fixed seed of the per-index caption RNG: part of the dataset definition, like VERSION.
_CAPTION_SEED = 20240601


def caption_for(index: int, label: int) -> str:
    """The caption of example ``index``: template drawn from an RNG seeded by (seed, index).

    Seeding per index (not one stream) keeps each caption independent of the examples before it.
    """
    rng = np.random.default_rng([_CAPTION_SEED, index])
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(word=NUMBER_WORDS[label])


def split_indices(split: str) -> range:
    """Indices into ``load_digits()`` of ``split``."""
    if split == "train":
        return range(0, TEST_START)
    if split == "test":
        return range(TEST_START, NUM_EXAMPLES)
    raise ValueError(
        f"unknown split '{split}' for dataset '{NAME}'; available: {', '.join(SPLITS)}"
    )


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,8,8,1] (values 0..16) and labels int32 [N], in sklearn order."""
    # Imported here: sklearn is slow to import and only needed when (re)building the cache.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images_Nx8x8 = np.asarray(bunch.images)
    if images_Nx8x8.shape != (NUM_EXAMPLES, 8, 8):
        raise RuntimeError(f"unexpected sklearn digits shape {images_Nx8x8.shape}")
    # Values are exact integers 0..16 stored as float64: rint makes the cast exact.
    images = np.rint(images_Nx8x8).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int32)
    return images, labels


def generate_split(split: str) -> list[dict]:
    """All records of ``split`` in index order.

    Record: ``{"image": uint8 [8,8,1] 0..16, "label": int32 scalar, "caption": bytes (utf-8)}``.
    """
    indices = split_indices(split)
    images, labels = _load_raw()
    records = []
    for i in indices:
        label = int(labels[i])
        records.append(
            {
                "image": images[i],
                "label": np.int32(label),
                "caption": caption_for(i, label).encode("utf-8"),
            }
        )
    if split == "train":
        _check_template_coverage(records)
    return records


def _check_template_coverage(records: list[dict]) -> None:
    """Guards the promise that every (digit, template) pair occurs in train.

    The captions are a fixed function of the index, so this either always holds or always fails; it
    fails loudly if someone edits the templates or the seed into an unlucky draw.
    """
    seen = {(int(r["label"]), r["caption"].decode("utf-8")) for r in records}
    for label, word in enumerate(NUMBER_WORDS):
        for template in CAPTION_TEMPLATES:
            if (label, template.format(word=word)) not in seen:
                raise RuntimeError(
                    f"digits train split lacks caption {template!r} for '{word}'; "
                    "change _CAPTION_SEED"
                )
