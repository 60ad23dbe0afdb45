"""Data package: embedded digits cache, byte and word tokenizers, grain pipelines, iterator checkpointing."""

import dataclasses
import pickle
import re
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from crossmodal_jax.data import digits, pipeline, sources, text

TEXT_LEN = 48


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def train_source(data_dir):
    return sources.get_source("digits", "train", data_dir)


def _sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


# --- digits dataset -------------------------------------------------------------------------------


def test_split_sizes_and_test_split_is_sklearn_tail(data_dir, train_source):
    test = sources.load_arrays("digits", "test", data_dir)
    train = sources.load_arrays("digits", "train", data_dir)
    assert len(train_source) == 1500 and train["label"].shape == (1500,)
    assert test["image"].shape == (297, 8, 8, 1) and test["image"].dtype == np.uint8
    assert test["label"].dtype == np.int32 and test["caption"].dtype == object
    ref = _sklearn_digits()
    np.testing.assert_array_equal(test["image"][..., 0], ref.images[digits.TEST_START :])
    np.testing.assert_array_equal(test["label"], ref.target[digits.TEST_START :])
    np.testing.assert_array_equal(train["image"][..., 0], ref.images[: digits.TEST_START])
    assert int(train["image"].max()) == 16  # raw ink values, not rescaled


def test_captions_name_their_digit_and_cover_all_templates(data_dir):
    for split in ("train", "test"):
        arrays = sources.load_arrays("digits", split, data_dir)
        for label, caption in zip(arrays["label"], arrays["caption"], strict=True):
            words = set(re.findall(r"[a-z]+", caption))
            named = words & set(digits.NUMBER_WORDS)
            assert named == {digits.NUMBER_WORDS[label]}, caption
    train = sources.load_arrays("digits", "train", data_dir)
    pairs = set(zip(train["label"].tolist(), train["caption"].tolist(), strict=True))
    assert "the digit {word}" in digits.CAPTION_TEMPLATES
    for label, word in enumerate(digits.NUMBER_WORDS):
        assert (label, f"the digit {word}") in pairs
        for template in digits.CAPTION_TEMPLATES:
            assert (label, template.format(word=word)) in pairs


def test_build_is_deterministic_and_cache_is_reused(tmp_path, monkeypatch):
    dir_a = sources.prepare("digits", tmp_path / "a")
    dir_b = sources.prepare("digits", tmp_path / "b")
    for split in ("train", "test"):
        file_a = (dir_a / f"{split}.array_record").read_bytes()
        assert file_a == (dir_b / f"{split}.array_record").read_bytes()
    assert not [p for p in dir_a.parent.iterdir() if p.name.startswith(".tmp")]

    mtime = (dir_a / "train.array_record").stat().st_mtime_ns

    def no_rebuild(split):
        raise AssertionError("cache was rebuilt")

    spec = dataclasses.replace(sources.DATASETS["digits"], generate=no_rebuild)
    monkeypatch.setitem(sources.DATASETS, "digits", spec)
    assert len(sources.get_source("digits", "train", tmp_path / "a")) == 1500
    assert (dir_a / "train.array_record").stat().st_mtime_ns == mtime


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(split):
        raise RuntimeError("boom")

    spec = dataclasses.replace(sources.DATASETS["digits"], generate=broken)
    monkeypatch.setitem(sources.DATASETS, "digits", spec)
    with pytest.raises(RuntimeError, match="boom"):
        sources.prepare("digits", tmp_path)
    assert list((tmp_path / "digits").iterdir()) == []


def test_concurrent_builder_losing_the_race_uses_the_winner(tmp_path, monkeypatch):
    winner = sources.prepare("digits", tmp_path / "winner")
    final = tmp_path / "race" / "digits" / winner.name
    spec = sources.DATASETS["digits"]

    def racing(split):
        if not final.exists():  # another process finishes while we are still writing
            shutil.copytree(winner, final)
        return spec.generate(split)

    monkeypatch.setitem(sources.DATASETS, "digits", dataclasses.replace(spec, generate=racing))
    assert sources.prepare("digits", tmp_path / "race") == final
    assert [p.name for p in final.parent.iterdir()] == [winner.name]  # temp dir removed


def test_unknown_dataset_and_split_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        sources.get_source("foo", "train", tmp_path)
    assert str(err.value) == (
        "unknown dataset 'foo'; available: digits, moving_digits, moving_shapes, moving_shapes_smoke, "
        "shapes, spoken_digits, spoken_digits_smoke, spoken_shapes, spoken_shapes_smoke"
    )
    with pytest.raises(ValueError) as err:
        sources.get_source("digits", "validation", tmp_path)
    assert "\n" not in str(err.value) and "'validation'" in str(err.value)
    assert not (tmp_path / "foo").exists()


def test_source_records_and_pickling(train_source):
    record = train_source[3]
    assert record["image"].shape == (8, 8, 1) and record["image"].dtype == np.uint8
    assert isinstance(record["label"], np.int32) and isinstance(record["caption"], bytes)
    clone = pickle.loads(pickle.dumps(train_source))
    assert len(clone) == 1500
    np.testing.assert_array_equal(clone[3]["image"], record["image"])
    batch = train_source.__getitems__([3, 0])
    assert batch[0]["caption"] == record["caption"]


# --- tokenizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", ["the digit seven", "", "héllo wörld 数字 🎉"])
def test_tokenizer_round_trip(s):
    ids, mask = text.encode(s, 64)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (64,)
    n = len(s.encode("utf-8"))
    assert ids[n] == text.EOS_ID and np.all(ids[n + 1 :] == text.PAD_ID)
    assert mask.sum() == n + 1 and np.all(mask[: n + 1] == 1)
    assert ids[:n].min(initial=text.VOCAB_SIZE) >= text.BYTE_OFFSET
    assert ids.max() < text.VOCAB_SIZE
    assert text.decode(ids) == s


def test_tokenizer_truncation_keeps_eos():
    ids, mask = text.encode("abcdefgh", 5)
    assert ids.tolist() == [ord(c) + text.BYTE_OFFSET for c in "abcd"] + [text.EOS_ID]
    assert mask.tolist() == [1] * 5
    assert text.decode(ids) == "abcd"
    ids, _ = text.encode("é", 2)  # 2 UTF-8 bytes, room for 1: split char decodes without error
    assert text.decode(ids) == "\ufffd"


def test_tokenizer_decode_skips_specials_and_batches():
    ids = [ord("a") + 3, text.MASK_ID, text.PAD_ID, ord("b") + 3, text.EOS_ID, ord("c") + 3]
    assert text.decode(np.array(ids)) == "ab"
    batch_ids, batch_mask = text.encode_batch(["one", "seven"], 8)
    assert batch_ids.shape == batch_mask.shape == (2, 8)
    assert text.decode_batch(batch_ids) == ["one", "seven"]
    assert batch_mask.sum(axis=1).tolist() == [4, 6]


WORDS = text.TextTokenizer(
    text.caption_words(["the digit one", "the digit seven moves up"]).split()
)


def test_caption_words_is_the_sorted_distinct_words():
    assert WORDS.words == ("digit", "moves", "one", "seven", "the", "up")
    assert WORDS.vocab_size == text.WORD_OFFSET + 6 and text.TextTokenizer().vocab_size == 259


def test_word_tokenizer_round_trip_unknown_words_and_truncation():
    ids, mask = WORDS.encode("the digit seven moves up", 8)
    ids_of = {w: i + text.WORD_OFFSET for i, w in enumerate(WORDS.words)}
    assert ids.tolist() == [ids_of[w] for w in "the digit seven moves up".split()] + [
        text.EOS_ID,
        text.PAD_ID,
        text.PAD_ID,
    ]
    assert mask.tolist() == [1] * 6 + [0] * 2
    assert WORDS.decode(ids) == "the digit seven moves up"
    ids, _ = WORDS.encode("the  digit\tnine", 8)  # any whitespace separates; "nine" is unknown
    assert ids[:4].tolist() == [ids_of["the"], ids_of["digit"], text.UNK_ID, text.EOS_ID]
    assert WORDS.decode(ids) == "the digit" and WORDS.unknown_words("the nine") == ["nine"]
    ids, mask = WORDS.encode("the digit one moves up", 3)  # truncated: EOS still fits
    assert ids.tolist() == [ids_of["the"], ids_of["digit"], text.EOS_ID] and mask.sum() == 3
    assert WORDS.length("the digit one") == 3 and text.TextTokenizer().length("é") == 2


def test_word_tokenizer_decode_skips_specials_batches_and_pickles():
    one = text.WORD_OFFSET + WORDS.words.index("one")
    row = [text.MASK_ID, one, text.PAD_ID, text.UNK_ID, one, text.EOS_ID, one]
    assert WORDS.decode(np.array(row)) == "one one"
    ids, mask = WORDS.encode_batch(["the one", "up"], 4)
    assert ids.shape == mask.shape == (2, 4) and WORDS.decode_batch(ids) == ["the one", "up"]
    assert WORDS.unused_ids == (text.UNK_ID,) and text.TextTokenizer().unused_ids == ()
    assert pickle.loads(pickle.dumps(WORDS)).encode("the one", 4)[0].tolist() == ids[0].tolist()
    # Bytes through the same interface: exactly the module-level byte functions.
    byte_ids, _ = text.TextTokenizer().encode("one", 8)
    assert byte_ids.tolist() == text.encode("one", 8)[0].tolist()
    for bad in (["one", "one"], ["two words"], [""]):
        with pytest.raises(ValueError, match="text vocabulary"):
            text.TextTokenizer(bad)


# --- pipelines ------------------------------------------------------------------------------------


def test_image_scaling_and_inverse():
    raw = np.array([0, 8, 16], dtype=np.uint8)
    unit = pipeline.image_to_unit(raw, 16)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [-1.0, 0.0, 1.0])
    assert pipeline.unit_to_uint8(unit).tolist() == [0, 128, 255]
    assert pipeline.unit_to_uint8(np.array([-3.0, 3.0])).tolist() == [0, 255]


def _labels(it, n):
    return [next(it)["label"].tolist() for _ in range(n)]


def test_train_iterator_batches_are_well_formed(train_source):
    transform = pipeline.ImageTextFeatures(TEXT_LEN)
    it = pipeline.make_train_iterator(
        train_source, global_batch_size=32, seed=0, transform=transform
    )
    batch = next(it)
    assert set(batch) == {"image", "text", "text_mask", "label"}
    assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["text"].shape == batch["text_mask"].shape == (32, TEXT_LEN)
    assert batch["text"].dtype == batch["text_mask"].dtype == np.int32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    for ids, label in zip(batch["text"], batch["label"], strict=True):
        assert digits.NUMBER_WORDS[label] in text.decode(ids)
    # The pipeline reuses the one scaling function and tokenizer.
    expected = transform.map(train_source[0])
    np.testing.assert_array_equal(
        expected["image"], pipeline.image_to_unit(train_source[0]["image"], 16)
    )


def _toy_source(n):
    return [
        {"image": np.full((2, 2, 1), i % 17, np.uint8), "label": np.int32(i), "caption": b"x"}
        for i in range(n)
    ]


def test_train_iterator_is_seeded_and_reshuffles_every_epoch():
    source, transform = _toy_source(20), pipeline.ImageTextFeatures(4)
    make = lambda seed: pipeline.make_train_iterator(
        source, global_batch_size=5, seed=seed, transform=transform
    )
    first = _labels(make(7), 12)  # 3 epochs of 4 batches
    assert first == _labels(make(7), 12)
    assert first != _labels(make(8), 12)
    epochs = [sum(first[4 * e : 4 * e + 4], []) for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(20))  # every example once per epoch
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(20))


def test_train_iterator_shards_per_process(monkeypatch):
    source, transform = _toy_source(24), pipeline.ImageTextFeatures(4)
    single = _labels(
        pipeline.make_train_iterator(source, global_batch_size=6, seed=3, transform=transform), 8
    )
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    local = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        it = pipeline.make_train_iterator(source, global_batch_size=6, seed=3, transform=transform)
        local.append(_labels(it, 8))
    for step in range(8):
        assert len(local[0][step]) == len(local[1][step]) == 3
        assert not set(local[0][step]) & set(local[1][step])  # disjoint shards
        # Same rows in the same order as one process: per-row randomness lines up too.
        assert local[0][step] + local[1][step] == single[step]
    with pytest.raises(ValueError, match="not divisible by the process count 2"):
        pipeline.make_train_iterator(source, global_batch_size=5, seed=0, transform=transform)


def test_train_iterator_rejects_batch_larger_than_dataset():
    with pytest.raises(ValueError, match="larger than the dataset"):
        pipeline.make_train_iterator(
            _toy_source(4), global_batch_size=8, seed=0, transform=pipeline.ImageTextFeatures(4)
        )


def _assert_batches_equal(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_train_iterator_resumes_through_orbax(train_source, tmp_path):
    transform = pipeline.ImageTextFeatures(TEXT_LEN)
    make = lambda: pipeline.make_train_iterator(
        train_source, global_batch_size=64, seed=11, transform=transform
    )
    it = make()
    for _ in range(30):  # past an epoch boundary (1500 / 64 < 24)
        next(it)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    manager.save(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = [next(it) for _ in range(5)]

    fresh = make()
    next(fresh)  # a fresh iterator mid-stream must still jump to the saved position
    restored = manager.restore(
        30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
    )
    _assert_batches_equal([next(restored["data"]) for _ in range(5)], expected)
    manager.close()

    # Plain get_state/set_state resume too.
    other = make()
    other.set_state(it.get_state())
    _assert_batches_equal([next(other)], [next(it)])


def test_eval_batches_cover_split_in_order(data_dir):
    source = sources.get_source("digits", "test", data_dir)
    batches = list(
        pipeline.make_eval_batches(
            source, batch_size=64, transform=pipeline.ImageTextFeatures(TEXT_LEN)
        )
    )
    assert [b["label"].shape[0] for b in batches] == [64, 64, 64, 64, 41]
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, sources.load_arrays("digits", "test", data_dir)["label"])
    assert batches[-1]["image"].shape == (41, 8, 8, 1) and batches[-1]["text"].shape == (
        41,
        TEXT_LEN,
    )


def test_train_iterator_with_worker_processes_matches_in_process(train_source):
    transform = pipeline.ImageTextFeatures(TEXT_LEN)
    make = lambda workers: pipeline.make_train_iterator(
        train_source, global_batch_size=16, seed=5, transform=transform, worker_count=workers
    )
    in_process, with_workers = make(0), make(1)
    try:
        _assert_batches_equal(
            [next(with_workers) for _ in range(3)], [next(in_process) for _ in range(3)]
        )
    finally:
        # Close explicitly: worker shared memory must not outlive the test.
        with_workers.close()
        in_process.close()
