"""Inference from a trained workdir; the task comes from the workdir's config.

text→image: python -m crossmodal_jax.sample --workdir=DIR --input=prompts.txt --output=OUT
    one prompt a line -> OUT/000000.png, OUT/000001.png, ... in line order (native resolution;
    --upscale=8 for larger nearest-neighbour copies).
image→text / speech→text / video→text: --input=FOLDER of .png / .wav / .gif, .npy or .mp4 files
    -> OUT/outputs.jsonl, one {"input": "<file name>", "text": "..."} a line, sorted by file name.
    Other image sizes are resized, other sample rates resampled, other frame counts padded/cut.
A joint workdir (configs/shapes_joint.py) runs one of its tasks: --task=NAME, or the task its
--input fits (a text file: text→image; a folder: the task whose source files it holds).

No training run, converted checkpoints (facebookresearch/DiT's sample.py; instead of --workdir):
    python -m crossmodal_jax.sample --dit=DiT-XL-2-256x256.pt --vae=sd-vae-ft-ema \
        --classes=207,360,387 --output=OUT [--sampler=ddim|dpm_solver|ddpm] [--steps=N] [--guidance=G]
    -> OUT/000000.png, ... in class order and OUT/grid.png (pretrained/class_sampler.py).
"""

from __future__ import annotations

import contextlib
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
_BATCH = flags.DEFINE_integer("batch_size", 64, "Prompts generated per call.")
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
    "With --dit: ddim (default, 50 steps), dpm_solver (25) or ddpm (250, DiT's learned variance).",
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


def with_command_line_sampler(config):
    """The config with the sampler settings of the command line."""
    if _GUIDANCE.value is not None:
        config.generator.sample.guidance = _GUIDANCE.value
    if _STEPS.value is not None:
        config.generator.sample.steps = _STEPS.value
    return config


@contextlib.contextmanager
def trained(workdir: str, config, task: str | None = None, check=None):
    """(Experiment, trained generator state) of a workdir on this machine's devices, used inside
    its mesh and rules; `task`: one task of a joint workdir; `check(exp)` runs before anything is
    restored or compiled (the user's inputs). No run validation: sampling needs neither a
    training folder nor a prepared TFDS dataset, only the workdir."""
    import flax.linen as nn
    import jax

    from crossmodal_jax import joint_run
    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages.generators import generator_stage
    from crossmodal_jax.stages.tokenizer_source import attach_tokenizer
    from crossmodal_jax.training.stage import restore_stage_state

    if task is None:
        exp = local_experiment(with_command_line_sampler(config), workdir)
    else:
        with_command_line_sampler(config.tasks[task])
        exps = joint_run.local_task_experiments(config, workdir)
        exp = exps[task]
    if check is not None:
        check(exp)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        try:
            if task is None:
                attach_tokenizer(exp)  # a single-task run's tokenizer_from another workdir
                state = restore_stage_state(generator_stage(exp), exp.ctx)
            else:
                state = joint_run.restore_view_state(config, workdir, exps, task)
        except FileNotFoundError as e:
            raise UserError(one_line(e)) from e
        yield exp, state


def text_to_image(
    workdir: str, config, prompts: list[str], output: str, task: str | None = None
) -> list[str]:
    """Generate one PNG per prompt; returns the written paths."""
    import jax
    import numpy as np

    from crossmodal_jax import data
    from crossmodal_jax.logs.pictures import save_png
    from crossmodal_jax.stages.generators import sampler

    def check(exp) -> None:  # before anything is restored or compiled
        check_prompts(exp.text, prompts)

    with trained(workdir, config, task, check) as (exp, state):
        generate = sampler(exp)
        os.makedirs(output, exist_ok=True)
        paths, key = [], jax.random.key(_SEED.value)
        for start in range(0, len(prompts), _BATCH.value):
            chunk = prompts[start : start + _BATCH.value]
            ids, mask = exp.text.encode_batch(chunk, exp.config.data.text_max_len)
            images = generate(
                state.ema_params,
                state.model_state,
                ids,
                mask,
                jax.random.fold_in(key, start),
            )
            images = data.unit_to_uint8(np.asarray(images))
            for i, img in enumerate(images):
                if _UPSCALE.value > 1:
                    img = img.repeat(_UPSCALE.value, 0).repeat(_UPSCALE.value, 1)
                path = os.path.join(output, f"{start + i:06d}.png")
                save_png(path, img)
                paths.append(path)
    return paths


def list_input_files(folder: str, config) -> list[str]:
    """The folder's inputs of the task's source modality, sorted by file name."""
    from crossmodal_jax.data import files
    from crossmodal_jax.data.modalities import MODALITIES

    suffixes = MODALITIES[tasks.get_task(config.task).source].input_suffixes
    try:
        return [str(p) for p in files.list_inputs(folder, suffixes)]
    except ValueError as e:
        raise UserError(one_line(e)) from e


def to_text(workdir: str, config, folder: str, output: str, task: str | None = None) -> list[str]:
    """Caption every input file; writes OUT/outputs.jsonl in file-name order."""
    import json

    import jax
    import numpy as np

    from crossmodal_jax.data.padded_audio import mask_key
    from crossmodal_jax.stages.generators import sampler

    paths = list_input_files(folder, config.tasks[task] if task else config)
    inputs = []

    def read_all(exp) -> None:  # every file is read and checked before any compute
        try:
            inputs.extend(
                exp.modality.read_input(p, exp.input_shape, exp.config.data) for p in paths
            )
        except (ValueError, OSError) as e:
            raise UserError(one_line(e)) from e

    with trained(workdir, config, task, read_all) as (exp, state):
        generate = sampler(exp)
        texts, key = [], jax.random.key(_SEED.value)
        source = exp.task.source
        for start in range(0, len(inputs), _BATCH.value):
            chunk = inputs[start : start + _BATCH.value]
            batch = {k: np.stack([entries[k] for entries in chunk]) for k in chunk[0]}
            ids = generate(
                state.ema_params,
                state.model_state,
                batch[source],
                jax.random.fold_in(key, start),
                batch.get(mask_key(source)),  # a padded clip's frame mask, or None
            )
            texts += exp.text.decode_batch(np.asarray(ids))
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "outputs.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for p, t in zip(paths, texts, strict=True):
            f.write(
                json.dumps({"input": os.path.basename(p), "text": t}, ensure_ascii=False) + "\n"
            )
    os.replace(path + ".tmp", path)  # never a half-written outputs.jsonl
    return [path]


def _prompts_to_images(workdir: str, config, path: str, output: str, task=None) -> list[str]:
    return text_to_image(workdir, config, read_prompts(path), output, task)


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
RUNNERS = {"image": _prompts_to_images, "text": to_text}


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
    dit_only = [f.name for f in (_VAE, _CLASSES, _SAMPLER, _IMAGE_SIZE) if f.value is not None]
    if dit_only:
        fail(f"--{dit_only[0]} is for --dit (sampling converted checkpoints)")
    if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
        fail("--workdir, --input and --output are required")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_library_logs()
    try:
        config = load_resolved_config(_WORKDIR.value)
        compile_cache.enable(config.compilation_cache_dir)  # the workdir's run's cache
        task = joint_task(config, _INPUT.value) if config.task == tasks.JOINT else None
        runner = RUNNERS[tasks.get_task(task or config.task).target]
        paths = runner(_WORKDIR.value, config, _INPUT.value, _OUTPUT.value, task)
    except UserError as e:
        fail(str(e))
    print(f"wrote {len(paths)} file(s) to {_OUTPUT.value}")


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
