"""One data-source protocol and one modality registry: what every kind of dataset answers, and
the one ordered pass (with its padding rule) that evaluation reads splits through."""

import ml_collections
import numpy as np
import pytest

from configs import img2txt, video2txt, vqdit_img
from crossmodal_jax.data import catalog, pipeline
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError


def test_unknown_dataset_names_every_kind():
    config = vqdit_img.get_config("smoke")
    config.data.name = "nope"
    with pytest.raises(
        UserError, match=r"unknown dataset 'nope'; available: .*digits.*folder.*tfds"
    ):
        catalog.open_dataset(config.data)


def test_embedded_dataset_answers_the_protocol(tmp_path):
    config = img2txt.get_config("smoke")
    config.data.data_dir = str(tmp_path)
    dataset = catalog.open_dataset(config.data)
    assert (dataset.modality, dataset.image_max_value) == ("image", 16)
    assert dataset.has_labels and dataset.digit_labels
    assert dataset.split("test") is dataset.split("test")  # opened once
    assert len(dataset.split("test")) == 1797 - 1500  # the contract's test split
    example = dataset.features().map(dataset.example_record())
    assert example["image"].shape == (8, 8, 1) and "label" in example


def test_folder_dataset_has_no_labels_and_shapes_without_files(tmp_path):
    config = vqdit_img.get_config("smoke")
    config.data.update(name="folder", path=str(tmp_path / "nowhere"))
    dataset = catalog.open_dataset(config.data)  # nothing is read yet
    assert not dataset.has_labels and dataset.image_max_value == 255
    example = dataset.features().map(dataset.example_record())
    assert example["image"].shape == (8, 8, 1) and "label" not in example


def test_converted_videos_need_a_frame_size_dividing_the_image_size():
    config = video2txt.get_config("smoke")
    config.data.update(name="folder", path="/nowhere", image_size=30)  # frame_size is 16
    with pytest.raises(
        UserError, match="data.image_size=30 is not a multiple of data.frame_size=16"
    ):
        catalog.open_dataset(config.data)


@pytest.mark.parametrize(
    "modality, shape, shown",
    [
        ("image", (2, 8, 8, 1), (2, 8, 8, 1)),
        ("audio", (2, 160, 32, 1), (2, 32, 160, 1)),  # time left to right, mels bottom up
        ("video", (2, 8, 16, 16, 1), (2, 16, 8 * 16, 1)),  # frames side by side
    ],
)
def test_every_modality_is_shown_as_uint8_pictures(modality, shape, shown):
    x = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    pictures = MODALITIES[modality].to_pictures(x)
    assert pictures.shape == shown and pictures.dtype == np.uint8
    assert pictures.min() == 0 and pictures.max() == 255


def test_audio_is_the_modality_computed_once():
    assert [m for m, entry in MODALITIES.items() if entry.precompute] == ["audio"]


def test_eval_batches_stop_at_the_limit_and_padding_repeats_the_last_row():
    source = [{"x": np.float32(i)} for i in range(10)]
    batches = list(pipeline.make_eval_batches(source, batch_size=4, transform=None, limit=7))
    assert [len(b["x"]) for b in batches] == [4, 3]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), np.arange(7))
    padded = pipeline.pad_batch(batches[-1]["x"], 4)
    np.testing.assert_array_equal(padded, [4, 5, 6, 6])
    assert pipeline.pad_batch(batches[0]["x"], 4) is batches[0]["x"]  # full: untouched


def test_a_config_data_block_is_one_schema_for_every_modality():
    blocks = {
        c.get_config().data.name: c.get_config().data for c in (vqdit_img, img2txt, video2txt)
    }
    keys = [set(ml_collections.ConfigDict(b).keys()) for b in blocks.values()]
    common = {"name", "data_dir", "text_words", "text_max_len", "worker_count", "path", "tfds_name"}
    assert all(common <= k for k in keys)
