"""The cases benchmarks/scale_plan.py compiles: each model row's stage and abstract global batch.

Legacy rows (`MODELS`: DiT-XL/2, a ~2 B text→image DiT) are built from their sizes; config rows
(`CONFIGS`, `TEXT_CONFIGS`) from configs/<name>.py by the generator's own builders and objective,
over the batch the latent shards (or precomputed code ids) feed. scale_plan.py's docstring says
what each row is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
from typing import Any

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT, CHANNELS, PATCH, CAPTION, DEFAULT_BATCH = 32, 4, 2, 128, 256
MODELS = {
    "dit_xl2": dict(hidden_size=1152, depth=28, num_heads=16),
    "t2i_2b": dict(
        hidden_size=2048,
        depth=20,
        num_heads=16,
        conditioning="cross_attention",
        cond_vocab_size=32_000,
        cond_len=CAPTION,
    ),
}
# Rows read from a config file of configs/ (its generator at full size).
CONFIGS = ("imagenet256", "coco256_t2i")
# The SD-VAE (sd-vae-ft-ema/-mse): 8× downsampling to 4 channels.
VAE_DOWNSAMPLE, VAE_CHANNELS = 8, 4
# Frozen text encoders a config may name, as pretrained/t5.py's settings: google/t5-v1_1-base's
# config.json (12 layers, width 768, 12 heads of 64, gated-GELU MLP of 2048, 32,128 pieces).
TEXT_ENCODERS = {
    "t5-v1_1-base": dict(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        num_heads=12,
        d_ff=2048,
        num_layers=12,
        num_buckets=32,
        max_distance=128,
        epsilon=1e-6,
        gated=True,
        activation="gelu_new",
        bias_per_layer=False,
    ),
}
FROZEN_BYTES_PER_PARAM = 4  # a frozen encoder's float32 weights: no gradient, Adam or EMA
GIB = 2**30


def load_config(name: str) -> ml_collections.ConfigDict:
    """configs/<name>.py's get_config() (the full size, no variant)."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def preset_mesh(preset: str, n: int) -> dict[str, int]:
    return {"dp": dict(data=n), "fsdp": dict(fsdp=n), "fsdp_tp": dict(fsdp=n // 4, tensor=4)}[
        preset
    ]


@dataclasses.dataclass
class Case:
    """What one row compiles: the stage, its global batch (ShapeDtypeStructs) and the parameter
    count of the frozen parts riding in model_state."""

    spec: Any
    batch: dict
    frozen_params: int = 0


@dataclasses.dataclass
class PlanExperiment:
    """The fields of an `Experiment` that the generator's builders read, at the config's full
    size without its dataset or pretrained files (neither exists here): the builders then make
    exactly the DiT, inputs and condition that training would."""

    config: ml_collections.ConfigDict
    latent_grid: tuple[int, int]
    tokenizer: Any  # .code_dim: the latent channels
    text: Any  # .vocab_size (a ClassTokenizer for class labels)
    text_encoder: Any = None  # .module, .width
    generator_model: Any = None


def legacy_case(model: str, batch: int) -> Case:
    """dit_xl2 / t2i_2b: eps-prediction Gaussian diffusion on latents (+ caption ids)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dit_step import diffusion_spec, train_config

    from crossmodal_jax.models.dit import DiT

    size = MODELS[model]
    dit = DiT((LATENT, LATENT), CHANNELS, patch_size=PATCH, dtype=jnp.bfloat16, remat=True, **size)
    caption_len = CAPTION if "cond_len" in size else 0
    spec = diffusion_spec(dit, train_config(1000), batch, caption_len=caption_len)
    shapes = {"latents": jax.ShapeDtypeStruct((batch, LATENT, LATENT, CHANNELS), np.float32)}
    if caption_len:
        shapes["text"] = jax.ShapeDtypeStruct((batch, CAPTION), np.int32)
        shapes["text_mask"] = jax.ShapeDtypeStruct((batch, CAPTION), np.int32)
    return Case(dataclasses.replace(spec, name=model), shapes)


def text_encoder_state(source: str, mesh=None, rules=()) -> tuple[Any, dict, int]:
    """(module, abstract params, parameter count) of a frozen text encoder of the named
    checkpoint's shape: random init, never materialised; with `mesh`, the params carry the
    shardings `rules` give them there (as pretrained.load places real weights)."""
    import flax.linen as nn
    import jax
    import numpy as np

    from crossmodal_jax.pretrained import t5
    from crossmodal_jax.training import sharding

    settings = text_encoder_settings(source)
    module = t5.build(settings)
    init = lambda *a: module.init(jax.random.key(0), *a)["params"]
    boxed = jax.eval_shape(init, *t5.init_args(settings))
    abstract = sharding.strip_boxes(boxed)
    if mesh is not None:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shardings = sharding.logical_shardings(boxed, mesh, rules)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
    return module, abstract, count


def text_encoder_settings(source: str) -> dict[str, Any]:
    """pretrained/t5.py's settings of the checkpoint a config names (by its folder's name)."""
    name = os.path.basename(str(source).rstrip("/"))
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text_encoder={source!r}: the plan knows {', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name]


def plan_experiment(
    config: ml_collections.ConfigDict, mesh=None, rules=()
) -> tuple[PlanExperiment, int]:
    """The config's PlanExperiment (SD-VAE latents; ImageNet's class ids from the TFDS builder's
    metadata; a frozen text encoder of its checkpoint's shape) and the encoder's parameter count.
    """
    from crossmodal_jax.data import text as text_lib
    from crossmodal_jax.data import tfds_sources
    from crossmodal_jax.experiment import TextEncoder

    side = config.data.image_size // VAE_DOWNSAMPLE
    encoder, frozen_params = None, 0
    if config.text_encoder:
        settings = text_encoder_settings(config.text_encoder)
        module, params, frozen_params = text_encoder_state(config.text_encoder, mesh, rules)
        encoder = TextEncoder(module, {"params": params}, settings["d_model"])
        text = types.SimpleNamespace(vocab_size=settings["vocab_size"])
    elif config.data.text_classes:
        text = text_lib.ClassTokenizer(tfds_sources.class_captions(config.data))
    else:
        text = text_lib.TextTokenizer(tuple(config.data.text_words.split()))
    latents = types.SimpleNamespace(code_dim=VAE_CHANNELS)
    return PlanExperiment(config, (side, side), latents, text, encoder), frozen_params


def config_case(model: str, mesh, rules, batch: int) -> Case:
    """The generator stage of configs/<model>.py over precomputed latents, on `mesh`."""
    import jax
    import numpy as np

    from crossmodal_jax.stages import builders, generators
    from crossmodal_jax.stages.objectives import TOKENIZER_LATENTS
    from crossmodal_jax.training import sharding
    from crossmodal_jax.training.stage import StageSpec

    config = load_config(model)
    diff = config.generator.diffusion
    if diff.process != "gaussian":
        raise ValueError(f"{model}: the plan builds Gaussian-diffusion DiTs, not {diff.process}")
    exp, frozen_params = plan_experiment(config, mesh, rules)
    side, text_len = exp.latent_grid[0], config.data.text_max_len
    rep = sharding.replicated(mesh)
    frozen: dict[str, Any] = {
        "tokenizer": {},  # the latents are read from shards: no encoder runs
        "latents": {
            "mean": jax.ShapeDtypeStruct((VAE_CHANNELS,), np.float32, sharding=rep),
            "std": jax.ShapeDtypeStruct((), np.float32, sharding=rep),
        },
    }
    if exp.text_encoder is not None:
        frozen["text_encoder"] = exp.text_encoder.variables
    dit = builders.build_dit(exp)
    # The tokenizer is None: the batch holds TOKENIZER_LATENTS, so no encoder runs.
    objective = generators.gaussian_objective(exp, None)
    spec = StageSpec(
        name=model,
        train_cfg=config.generator.train,
        init_variables=lambda key: dit.init(key, *builders.example_inputs(exp, dit)),
        objective=objective,
        make_iterator=lambda: None,  # compiled, never run
        frozen_state=frozen,
    )
    # What data/latent_shards.LatentFeatures yields a step.
    shapes = {
        TOKENIZER_LATENTS: jax.ShapeDtypeStruct((batch, side, side, VAE_CHANNELS), np.float32),
        "text": jax.ShapeDtypeStruct((batch, text_len), np.int32),
        "text_mask": jax.ShapeDtypeStruct((batch, text_len), np.int32),
        "label": jax.ShapeDtypeStruct((batch,), np.int32),
    }
    return Case(spec, shapes, frozen_params)


# Rows of X→text configs: the generator stage of the real Experiment, built on tfds's mock data
# (the model shapes come from the config, not the data), over precomputed code ids.
TEXT_CONFIGS = ("librispeech_s2t",)


def text_case(model: str, mesh, batch: int) -> Case:
    """The masked text generator of configs/<model>.py (precompute_codes: the batch holds the
    frozen tokenizer's code ids and their mask, as data the step never encodes), with the
    tokenizer's variables as abstract frozen state."""
    import jax
    import numpy as np

    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages import generators, tokenizer
    from crossmodal_jax.stages.objectives import TOKENIZER_CODES, TOKENIZER_CODES_MASK
    from crossmodal_jax.training import sharding
    from crossmodal_jax.training.step import frozen_state

    config = load_config(model)
    config.data.tfds_mock_examples = 2
    exp = local_experiment(config)
    x = jax.ShapeDtypeStruct((1, *exp.input_shape), np.float32)
    keys = {"params": jax.random.key(0), "vq": jax.random.key(1)}
    variables = jax.eval_shape(lambda v: exp.tokenizer.init(keys, v, train=False), x)
    rep = sharding.replicated(mesh)
    variables = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep),
        sharding.strip_boxes(variables),
    )
    exp.results[tokenizer.NAME] = frozen_state(variables)
    spec = generators.generator_stage(exp)
    text_len, grid = config.data.text_max_len, exp.code_grid
    shapes = {
        TOKENIZER_CODES: jax.ShapeDtypeStruct((batch, *grid), np.int32),
        "text": jax.ShapeDtypeStruct((batch, text_len), np.int32),
        "text_mask": jax.ShapeDtypeStruct((batch, text_len), np.int32),
    }
    if config.data.audio.padding == "end":  # padded clips: their codes' mask travels with them
        shapes[TOKENIZER_CODES_MASK] = jax.ShapeDtypeStruct((batch, *grid), np.int32)
    frozen_params = int(sum(np.prod(v.shape) for v in jax.tree.leaves(variables)))
    return Case(dataclasses.replace(spec, name=model), shapes, frozen_params)
