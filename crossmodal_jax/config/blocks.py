"""Building blocks of the config files in configs/: one function per config block, every field
with its default and a comment. A config file composes them and overrides what its task needs.

They live in the package (not in configs/) so that a config file works from any directory and
from an installed wheel: config files are loaded by path, without configs/ on sys.path.

Every default lives in two files: run_blocks.py (train, mesh, monitoring, data, evaluation) and
model_blocks.py (tokenizer, quantizers, generator, diffusion, sampler). This module is the one
namespace the config files import.
"""

from crossmodal_jax.config.model_blocks import (
    QUANTIZER_VARIANTS,
    adversarial,
    diffusion,
    generator,
    generator_model,
    joint_trunk,
    quantizer_variant,
    sample,
    shapes_tokenizer,
    sources,
    text_generator,
    text_task_smoke,
    tokenizer_model,
)
from crossmodal_jax.config.run_blocks import (
    audio_features,
    data,
    evaluation,
    folder_data,
    mesh,
    monitoring,
    smoke_train,
    tfds_data,
    train,
)

__all__ = [
    "QUANTIZER_VARIANTS",
    "adversarial",
    "audio_features",
    "data",
    "diffusion",
    "evaluation",
    "folder_data",
    "generator",
    "generator_model",
    "joint_trunk",
    "mesh",
    "monitoring",
    "quantizer_variant",
    "sample",
    "shapes_tokenizer",
    "smoke_train",
    "sources",
    "text_generator",
    "text_task_smoke",
    "tfds_data",
    "tokenizer_model",
    "train",
]
