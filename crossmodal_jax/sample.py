"""Inference from a trained workdir; the task comes from the workdir's config.

text→image: python -m crossmodal_jax.sample --workdir=DIR --input=prompts.txt --output=OUT
    one prompt a line -> OUT/000000.png, OUT/000001.png, ... in line order (native resolution;
    --upscale=8 for larger nearest-neighbour copies).
image→text / speech→text / video→text: --input=FOLDER of .png / .wav / .gif, .npy or .mp4 files
    -> OUT/outputs.jsonl, one {"input": "<file name>", "text": "..."} a line, sorted by file name.
    Other image sizes are resized, other sample rates resampled, other frame counts padded/cut.
A joint workdir (configs/shapes_joint.py) runs one of its tasks: --task=NAME, or the task its
--input fits (a text file: text→image; a folder: the task whose source files it holds).
--steps, --guidance and --sampler change the config's sampler; a workdir is sampled through
crossmodal_jax.pipeline (the Python API), so the same --seed gives the same outputs as
Pipeline.from_workdir(DIR).generate(prompts, seed=...) with its default buckets.

No training run, converted checkpoints (facebookresearch/DiT's sample.py; instead of --workdir):
    python -m crossmodal_jax.sample --dit=DiT-XL-2-256x256.pt --vae=sd-vae-ft-ema \
        --classes=207,360,387 --output=OUT [--sampler=ddim|dpm_solver|ddpm] [--steps=N] [--guidance=G]
        [--dit_dtype=float32|bfloat16]
    -> OUT/000000.png, ... in class order and OUT/grid.png (pretrained/class_sampler.py).
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from crossmodal_jax import tasks
from crossmodal_jax.config import blocks
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.errors import UserError, fail, one_line
from crossmodal_jax.logs.writers import quiet_library_logs
from crossmodal_jax.training import compile_cache

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by crossmodal_jax.main.")
_INPUT = flags.DEFINE_string(
    "input", None, "text→image: a text file, one prompt a line; X→text: a folder of inputs."
)
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the outputs (created).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling noise.")
_GUIDANCE = flags.DEFINE_float(
    "guidance", None, "Classifier-free guidance scale (default: config)."
)
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: config).")
_BATCH = flags.DEFINE_integer(
    "batch_size", 32, "Inputs generated per call (the largest of the pipeline's batch buckets)."
)
_UPSCALE = flags.DEFINE_integer("upscale", 1, "Nearest-neighbour upscale factor of written PNGs.")
_DIT = flags.DEFINE_string(
    "dit",
    None,
    "A class-conditional DiT checkpoint (facebookresearch .pt or diffusers folder) "
    "to sample from instead of --workdir.",
)
_VAE = flags.DEFINE_string("vae", None, "With --dit: the KL VAE folder (e.g. sd-vae-ft-ema).")
_CLASSES = flags.DEFINE_string("classes", None, "With --dit: class ids, e.g. 207,360,387.")
_SAMPLER = flags.DEFINE_string(
    "sampler",
    None,
    "The sampler (default: the workdir config's). With --dit: ddim (default, 50 steps), "
    "dpm_solver (25) or ddpm (250, DiT's learned variance).",
)
_DIT_DTYPE = flags.DEFINE_enum(
    "dit_dtype",
    "float32",
    ["float32", "bfloat16"],
    "With --dit: the DiT's compute dtype (weights stay float32). bfloat16 is faster where the "
    "hardware multiplies it (accelerators, AMX CPUs: docs/pretrained.md), a small move in the "
    "images.",
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "With --dit: the image side the checkpoints must produce (a check)."
)
_TASK = flags.DEFINE_string(
    "task", None, "Joint workdirs: the task to run (default: the one --input fits)."
)


def read_prompts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"input file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            prompts = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"input file {path} is not UTF-8 text ({e.reason})") from e
    if not prompts:
        raise UserError(f"input file {path} has no prompts")
    return prompts


def check_prompts(text, prompts: list[str]) -> None:
    """A prompt with a word outside the caption tokenizer's vocabulary is one line naming the line
    and the word (the model would read it as the unknown word)."""
    for line, prompt in enumerate(prompts, start=1):
        unknown = text.unknown_words(prompt)
        if unknown:
            raise UserError(
                f"prompt line {line} ({prompt!r}): the word {unknown[0]!r} is not in the "
                "vocabulary this model was trained with (data.text_words)"
            )


def sample_overrides() -> dict:
    """The sampler settings of the command line (None: the workdir config's)."""
    return dict(steps=_STEPS.value, guidance=_GUIDANCE.value, sampler=_SAMPLER.value)


def text_to_image(pipe, task: str, prompt_file: str, output: str) -> list[str]:
    """One PNG per prompt line, in line order; returns the written paths."""
    from crossmodal_jax.logs.pictures import save_png

    prompts = read_prompts(prompt_file)
    check_prompts(pipe.experiment(task).text, prompts)  # before anything is restored or compiled
    images = pipe.generate(prompts, task=task, seed=_SEED.value, **sample_overrides())
    os.makedirs(output, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        if _UPSCALE.value > 1:
            img = img.repeat(_UPSCALE.value, 0).repeat(_UPSCALE.value, 1)
        paths.append(os.path.join(output, f"{i:06d}.png"))
        save_png(paths[-1], img)
    return paths


def list_input_files(folder: str, source: str) -> list[str]:
    """The folder's inputs of the `source` modality, sorted by file name."""
    from crossmodal_jax.data import files
    from crossmodal_jax.data.modalities import MODALITIES

    try:
        return [str(p) for p in files.list_inputs(folder, MODALITIES[source].input_suffixes)]
    except ValueError as e:
        raise UserError(one_line(e)) from e


def to_text(pipe, task: str, folder: str, output: str) -> list[str]:
    """Caption every input file (all read and checked before any compute); writes
    OUT/outputs.jsonl in file-name order."""
    import json

    paths = list_input_files(folder, tasks.get_task(task).source)
    texts = pipe.caption(paths, task=task, seed=_SEED.value, **sample_overrides())
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "outputs.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for p, t in zip(paths, texts, strict=True):
            f.write(
                json.dumps({"input": os.path.basename(p), "text": t}, ensure_ascii=False) + "\n"
            )
    os.replace(path + ".tmp", path)  # never a half-written outputs.jsonl
    return [path]


def joint_task(config, input_path: str) -> str:
    """The task of a joint workdir to run: --task, else the one task --input fits."""
    names = sorted(config.tasks)
    if _TASK.value:
        if _TASK.value not in names:
            raise UserError(
                f"--task={_TASK.value}: this joint workdir has tasks {', '.join(names)}"
            )
        return _TASK.value
    if os.path.isfile(input_path):  # a prompt file
        fits = [n for n in names if tasks.get_task(n).source == tasks.TEXT]
    elif os.path.isdir(input_path):
        from crossmodal_jax.data.modalities import MODALITIES

        found = {os.path.splitext(f)[1].lower() for f in os.listdir(input_path)}
        fits = [
            n
            for n in names
            if tasks.get_task(n).source != tasks.TEXT
            and found & set(MODALITIES[tasks.get_task(n).source].input_suffixes)
        ]
    else:
        raise UserError(f"input not found: {input_path}")
    if len(fits) != 1:
        what = f"several of its tasks ({', '.join(fits)})" if fits else "none of its tasks"
        raise UserError(
            f"--input={input_path} fits {what}; this joint workdir has {', '.join(names)}: "
            "name one with --task"
        )
    return fits[0]


# By the task's target: what --input is and what is written.
RUNNERS = {"image": text_to_image, "text": to_text}


def from_checkpoints() -> list[str]:
    """--dit: class samples from converted checkpoints, no workdir."""
    from crossmodal_jax.pretrained.class_sampler import sample_to_folder

    if _WORKDIR.value:
        raise UserError("--dit and --workdir exclude each other: sample from one of them")
    if _INPUT.value or _TASK.value:
        raise UserError("--input and --task are for --workdir; with --dit, name --classes")
    if not (_VAE.value and _CLASSES.value and _OUTPUT.value):
        raise UserError("--dit needs --vae, --classes and --output")
    return sample_to_folder(
        _DIT.value,
        _VAE.value,
        _CLASSES.value,
        _OUTPUT.value,
        sampler=_SAMPLER.value or "ddim",
        steps=_STEPS.value,
        guidance=4.0 if _GUIDANCE.value is None else _GUIDANCE.value,
        seed=_SEED.value,
        batch_size=_BATCH.value,
        image_size=_IMAGE_SIZE.value,
        upscale=_UPSCALE.value,
        dtype=_DIT_DTYPE.value,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _DIT.value:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        quiet_library_logs()
        compile_cache.enable(blocks.monitoring().compilation_cache_dir)  # the configs' default
        try:
            paths = from_checkpoints()
        except UserError as e:
            fail(one_line(e))
        print(f"wrote {len(paths)} file(s) to {_OUTPUT.value}")
        return
    dit_only = [f.name for f in (_VAE, _CLASSES, _IMAGE_SIZE) if f.value is not None]
    if dit_only:
        fail(f"--{dit_only[0]} is for --dit (sampling converted checkpoints)")
    if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
        fail("--workdir, --input and --output are required")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_library_logs()
    try:
        config = load_resolved_config(_WORKDIR.value)
        compile_cache.enable(config.compilation_cache_dir)  # the workdir's run's cache
        from crossmodal_jax.pipeline import Pipeline, buckets_up_to

        task = joint_task(config, _INPUT.value) if config.task == tasks.JOINT else config.task
        pipe = Pipeline(_WORKDIR.value, config, buckets=buckets_up_to(_BATCH.value))
        paths = RUNNERS[tasks.get_task(task).target](pipe, task, _INPUT.value, _OUTPUT.value)
    except UserError as e:
        fail(str(e))
    print(f"wrote {len(paths)} file(s) to {_OUTPUT.value}")


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
