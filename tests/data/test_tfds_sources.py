"""TFDS sources (data/tfds_sources.py): every dataset through the real loading code, offline.

`tfds.testing.mock_data` replaces what `tfds.data_source` reads (random examples of the dataset's
real features, from its builder code: no metadata or network needed); everything else is ours: the
shipped config with `data.name="tfds"`, validation, the source, the record conversion, the
features and the model input shape. librispeech, ucf101 and coco_captions need tensorflow (the
`tfds` extra, which `make test` installs), and so does preparing a dataset: one mnist is prepared
for real (two fake examples a split) and read without any mock.
"""

import importlib.util
import os
import pickle
import tempfile
from unittest import mock

import ml_collections
import numpy as np
import pytest
from PIL import Image

from crossmodal_jax.config import validation
from crossmodal_jax.data import files, tfds_records, tfds_sources
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import local_experiment

tfds = pytest.importorskip("tensorflow_datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEEDS_TF = pytest.mark.skipif(
    not tfds_sources.tensorflow_installed(), reason='needs tensorflow: pip install -e ".[tfds]"'
)
N = 4  # mock examples per split


def _config(file: str, tfds_name: str, **data) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(file, os.path.join(ROOT, "configs", f"{file}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.update(name="tfds", tfds_name=tfds_name, data_dir="/nonexistent/tfds")
    config.data.update(data)
    return config


@pytest.fixture(autouse=True)
def _fresh_sources(tmp_path, monkeypatch):
    tfds_sources.clear_cache()  # sources opened under another mock must not be reused
    # tfds leaves an empty mkdtemp("tfds") behind each time it builds an unprepared dataset's
    # info (DatasetInfo.initialize_from_bucket): let them land where pytest cleans up.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    tfds_sources.clear_cache()


def _split(config: ml_collections.ConfigDict, split: str):
    """The split as a run opens it."""
    return local_experiment(config).dataset.split(split)


def _opened(config: ml_collections.ConfigDict):
    """The experiment of a config with both splits opened, as a run does before anything else."""
    exp = local_experiment(config)
    validation.check_data(exp)
    return exp


def _mocked():
    return tfds.testing.mock_data(num_examples=N, policy=tfds.testing.MockPolicy.USE_CODE)


def _one_line(call, *args) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# (config file, tfds_name, data overrides, the record's media key, a caption check)
CASES = {
    "mnist_text2image": ("vqdit_img", "mnist", {}, "image"),
    "mnist_image2text": ("img2txt", "mnist", {}, "image"),
    "cifar10_rgb": (
        "img2txt",
        "cifar10",
        dict(text_words="", text_max_len=32, image_size=16, channels=3),
        "image",
    ),
    "coco_captions_text2image": ("vqdit_img", "coco_captions", {}, "image"),
    "coco_captions_image2text": (
        "img2txt",
        "coco_captions",
        dict(text_words="", text_max_len=48),
        "image",
    ),
    "librispeech": ("speech2txt", "librispeech", dict(text_words="", text_max_len=48), "audio"),
    "ucf101": ("video2txt", "ucf101", dict(text_words="", text_max_len=32), "video"),
}
TF_CASES = {"coco_captions_text2image", "coco_captions_image2text", "librispeech", "ucf101"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=NEEDS_TF) if c in TF_CASES else c for c in CASES]
)
def test_every_source_feeds_its_model_through_the_config(case, tmp_path):
    file, name, overrides, media = CASES[case]
    config = _config(file, name, **overrides)
    spec = tfds_records.TFDS_DATASETS[name]
    with _mocked():
        exp = _opened(config)
        train, test = exp.dataset.split("train"), exp.dataset.split("test")
        assert len(train) == len(test) == N
        assert test.split == spec.test_split and train.split == spec.train_split
        record = train[1]
        example = train._inner[1]  # what tfds.data_source returned for it
        batch = next(exp.batches("test", 2))
        source, transform = exp.source("train")
        source = pickle.loads(pickle.dumps(source))  # grain workers unpickle the source
        shape = exp.input_shape

    # Records: the embedded datasets' fields and dtypes, converted to the configured shapes as
    # the folder reader and the sample CLI convert the same pixels from files.
    d = config.data
    side = (d.image_size, d.image_size) if media != "audio" else ()
    if media == "image":
        Image.fromarray(
            np.squeeze(example["image"], axis=-1) if name == "mnist" else example["image"]
        ).save(tmp_path / "x.png")
        expected = files.read_image(tmp_path / "x.png", side, d.channels)
        assert record["image"].shape == (*side, d.channels)
    elif media == "video":
        np.save(tmp_path / "x.npy", example["video"])
        expected = files.read_video(tmp_path / "x.npy", d.frames, side, d.channels)
        assert record["video"].shape == (d.frames, *side, d.channels)
    else:
        expected = example["speech"]
    assert record[media].dtype == expected.dtype
    np.testing.assert_array_equal(record[media], expected)
    caption = record["caption"].decode()
    if name == "mnist":
        assert caption == f"the digit {tfds_records.NUMBER_WORDS[int(example['label'])]}"
        assert record["label"] == example["label"]
    elif name == "cifar10":
        word = tfds_records.CIFAR10_CLASSES[int(example["label"])]
        assert caption == f"a photo of {'an' if word[0] in 'aeiou' else 'a'} {word}"
    elif name == "ucf101":
        names = train._inner.dataset_info.features["label"].names
        assert caption == tfds_records.class_caption(names[int(example["label"])])
    elif name == "coco_captions":
        assert caption == " ".join(tfds_records._text(example["captions"]["text"][0]).split())
    else:
        assert caption == " ".join(tfds_records._text(example["text"]).lower().split())

    # The model's view: the features of the record, in batches, with the config's input shape.
    key = exp.task.continuous
    assert transform is None or transform.map(record)[key].shape == shape
    assert batch[key].shape == (2, *shape) and batch["text"].shape == (2, d.text_max_len)
    assert len(source) == N
    # Class datasets keep their labels (the text→image feature classifier learns from them);
    # only mnist's are the digit its caption names (image→text digit-naming accuracy).
    spec = tfds_records.TFDS_DATASETS[name]
    assert ("label" in batch) == (name in ("mnist", "cifar10", "ucf101")) == spec.has_labels
    assert exp.dataset.digit_labels == (name == "mnist")


def test_mnist_records_keep_the_pixels_and_train_batches_shuffle(tmp_path):
    config = _config("img2txt", "mnist", image_size=28)  # mnist's own size: no resizing
    config.tokenizer.train.batch_size = 2
    with _mocked():
        exp = local_experiment(config)
        source = exp.dataset.split("train")
        for i in range(N):
            np.testing.assert_array_equal(source[i]["image"], source._inner[i]["image"])
        iterator = exp.train_iterator_factory(config.tokenizer.train)()
        batches = [next(iterator) for _ in range(4)]  # two epochs
    assert all(b["image"].shape == (2, 28, 28, 1) for b in batches)
    labels = sorted(int(y) for b in batches[:2] for y in b["label"])
    assert labels == sorted(int(source._inner[i]["label"]) for i in range(N))


def test_class_names_become_captions():
    assert tfds_records.class_caption("ApplyEyeMakeup") == "apply eye makeup"
    assert tfds_records.class_caption("YoYo") == "yo yo"
    assert tfds_records.class_caption("apply_eye_makeup") == "apply eye makeup"
    cifar = tfds_records.TFDS_DATASETS["cifar10"]
    captions = tfds_records.label_captions(cifar, tfds_records.CIFAR10_CLASSES)
    assert captions[:4] == (
        "a photo of an airplane",
        "a photo of an automobile",
        "a photo of a bird",
        "a photo of a cat",
    )


# --- one-line errors, before anything is written ----------------------------------------------


def test_unprepared_dataset_says_how_to_prepare_it_and_writes_nothing(tmp_path):
    config = _config("img2txt", "mnist", data_dir=str(tmp_path / "tfds"))
    message = _one_line(_opened, config)  # no mock: tfds really looks
    assert f"tfds dataset 'mnist' in {tmp_path / 'tfds'} (data.data_dir) is not prepared" in message
    assert "tfds.builder('mnist'" in message and "download_and_prepare()" in message
    assert "file_format='array_record'" in message
    assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize(
    "tfds_name, expected",
    [
        ("imagenet21k", "unknown data.tfds_name 'imagenet21k'; available: cifar10, coco_"),
        ("", "data.name='tfds' needs data.tfds_name, one of: cifar10, coco_captions, "),
    ],
)
def test_unknown_tfds_name_is_one_line(tfds_name, expected):
    assert expected in _one_line(local_experiment, _config("img2txt", tfds_name))


def test_dataset_of_another_modality_is_refused():
    message = _one_line(local_experiment, _config("img2txt", "librispeech"))
    assert (
        "task 'image2text' needs a dataset of images, but data.tfds_name='librispeech'" in message
    )


def test_captions_must_fit_the_caption_tokenizer():
    with _mocked():
        # cifar10 class names are not words of img2txt's digit vocabulary ...
        message = _one_line(_split, _config("img2txt", "cifar10"), "train")
        assert "caption 'a photo of an airplane' has the word 'photo'" in message
        assert 'data.text_words=""' in message
        # ... and with bytes, 8 tokens do not hold them.
        config = _config("img2txt", "cifar10", text_words="")
        assert "is 22 UTF-8 bytes; data.text_max_len=8 holds 7" in _one_line(
            _split, config, "train"
        )


@NEEDS_TF
def test_free_text_captions_need_the_byte_tokenizer():
    with _mocked():
        message = _one_line(_split, _config("speech2txt", "librispeech"), "train")
    assert "'librispeech' has free-form captions" in message


def test_dataset_that_needs_tensorflow_says_how_to_install_it():
    with mock.patch.object(tfds_sources, "tensorflow_installed", return_value=False):
        config = _config("speech2txt", "librispeech", text_words="")
        message = _one_line(_split, config, "train")
    assert message == (
        "tfds dataset 'librispeech' needs tensorflow to decode its audio, which is not "
        'installed: pip install -e ".[tfds]"'
    )


# --- a really prepared dataset ------------------------------------------------------------------


def _prepare_fake_mnist(data_dir, file_format: str):
    """mnist prepared by tfds itself, from two fake examples a split instead of the download."""
    from tensorflow_datasets.image_classification import mnist

    def split_generators(self, dl_manager):
        return {"train": self._generate_examples(2), "test": self._generate_examples(2)}

    def generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((28, 28, 1), 40 * i + 20, np.uint8), "label": 7 - i}

    with (
        mock.patch.object(mnist.MNIST, "_split_generators", split_generators),
        mock.patch.object(mnist.MNIST, "_generate_examples", generate_examples),
    ):
        builder = tfds.builder("mnist", data_dir=str(data_dir), file_format=file_format)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )


@NEEDS_TF  # preparing encodes the images with tensorflow (reading them does not)
def test_prepared_mnist_is_read_without_mocks(tmp_path):
    pytest.importorskip("importlib_resources")  # tfds 4.9.10 prepares with it, undeclared
    _prepare_fake_mnist(tmp_path / "tfds", "array_record")
    config = _config("img2txt", "mnist", data_dir=str(tmp_path / "tfds"), image_size=28)
    source = pickle.loads(pickle.dumps(_opened(config).dataset.split("test")))
    assert len(source) == 2
    records = sorted((source[i] for i in range(2)), key=lambda r: int(r["label"]))
    assert [r["caption"] for r in records] == [b"the digit six", b"the digit seven"]
    np.testing.assert_array_equal(records[0]["image"], np.full((28, 28, 1), 60, np.uint8))


@NEEDS_TF
def test_mnist_prepared_without_random_access_is_one_line(tmp_path):
    pytest.importorskip("importlib_resources")
    _prepare_fake_mnist(tmp_path / "tfds", "tfrecord")
    config = _config("img2txt", "mnist", data_dir=str(tmp_path / "tfds"))
    message = _one_line(_split, config, "train")
    assert "is stored as tfrecord, which has no random access; delete " in message


# --- class-conditional ImageNet on tfds's mock data (configs/imagenet256.py) -------------------


def test_imagenet_mock_data_become_class_labels_of_centre_crops():
    """data.tfds_mock_examples reads tfds's own mock ImageNet without any mock context; each
    caption is a WordNet id, which data.text_classes turns into the class index the DiT's label
    embedding reads; images are ADM's centre crop."""
    config = _config("imagenet256", "imagenet2012")
    config.update(tokenizer_from="")  # our own tokenizer block: no pretrained part needed here
    config.data.update(tfds_mock_examples=N)
    exp = local_experiment(config)
    train = exp.dataset.split("train")
    assert len(train) == N and exp.dataset.fingerprint("train")["records"] == N
    example, record = train._inner[1], train[1]
    names = train._inner.dataset_info.features["label"].names
    assert record["caption"].decode() == names[int(example["label"])]
    side = config.data.image_size
    expected = files.center_crop(Image.fromarray(example["image"]), side)
    np.testing.assert_array_equal(record["image"], np.asarray(expected))
    batch = next(exp.batches("train", N))
    assert batch["text"].shape == (N, 1)
    np.testing.assert_array_equal(batch["text"][:, 0], [train._inner[i]["label"] for i in range(N)])
    assert batch["text_mask"].tolist() == [[1]] * N

    text = exp.text  # the class tokenizer: captions, indices and the empty (null) prompt
    assert text.vocab_size == 1000 and text.decode(text.encode("207", 1)[0]) == names[207]
    assert text.encode(names[3], 1)[0].tolist() == [3]
    assert text.encode("", 1)[1].tolist() == [0]  # unconditional
    assert text.unknown_words("a golden retriever") == ["a golden retriever"]
    assert text.unknown_words("999") == [] and text.unknown_words("1000") == ["1000"]


def test_centre_crop_keeps_the_middle_square():
    """ADM's crop: the short side scaled to the size, the long side's middle kept."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 20:60] = 255  # the middle 40 columns are white
    out = np.asarray(files.center_crop(Image.fromarray(pixels), 20))
    assert out.shape == (20, 20, 3) and out.min() == 255
