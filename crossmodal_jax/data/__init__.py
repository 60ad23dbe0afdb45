"""Data: embedded datasets cached as ArrayRecord, grain pipelines, the byte tokenizer, audio
features and readers of user input files."""

from crossmodal_jax.data import audio, files, moving_digits, spoken_digits
from crossmodal_jax.data.digits import CAPTION_TEMPLATES, NUMBER_WORDS, TEST_START
from crossmodal_jax.data.features import AudioTextFeatures, VideoTextFeatures, audio_features
from crossmodal_jax.data.files import (
    InputFileError,
    list_inputs,
    read_image,
    read_video,
    read_wav,
)
from crossmodal_jax.data.pipeline import (
    ImageTextFeatures,
    image_to_unit,
    local_batch_size,
    make_eval_batches,
    make_train_iterator,
    materialize,
    unit_to_uint8,
)
from crossmodal_jax.data.sources import (
    DATASETS,
    DatasetSpec,
    RecordSource,
    default_data_dir,
    get_source,
    get_spec,
    load_arrays,
    prepare,
)
from crossmodal_jax.data.text import (
    BYTE_OFFSET,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    VOCAB_SIZE,
    decode,
    decode_batch,
    encode,
    encode_batch,
)

__all__ = [
    "AudioTextFeatures",
    "InputFileError",
    "VideoTextFeatures",
    "audio",
    "audio_features",
    "files",
    "list_inputs",
    "moving_digits",
    "read_image",
    "read_video",
    "read_wav",
    "spoken_digits",
    "BYTE_OFFSET",
    "CAPTION_TEMPLATES",
    "DATASETS",
    "DatasetSpec",
    "EOS_ID",
    "ImageTextFeatures",
    "MASK_ID",
    "NUMBER_WORDS",
    "PAD_ID",
    "RecordSource",
    "TEST_START",
    "VOCAB_SIZE",
    "decode",
    "decode_batch",
    "default_data_dir",
    "encode",
    "encode_batch",
    "get_source",
    "get_spec",
    "image_to_unit",
    "load_arrays",
    "local_batch_size",
    "make_eval_batches",
    "make_train_iterator",
    "materialize",
    "prepare",
    "unit_to_uint8",
]
