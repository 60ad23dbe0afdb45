"""Inference for people: one object over a trained workdir (single-task or joint).

    from crossmodal_jax.pipeline import Pipeline
    pipe = Pipeline.from_workdir("runs/shapes_joint")
    pipe.tasks                                   # ("image2text", ..., "text2image", ...)
    images = pipe.generate(["a red circle at top"], steps=8, guidance=2.0, seed=0)  # uint8 [N,H,W,C]
    texts = pipe.caption(["scene.png", "clip.wav", video_array])                    # strings

Requests are cut into batches of a few fixed sizes (`buckets`, the last row repeated to fill one),
so calls with 1, 7 or 33 inputs reuse the same compiled samplers; a sampler is compiled once per
(task, sampler settings, bucket) and kept, and `warmup` compiles them up front. The sample CLI
(`sample.py`) and the web demo (`serve.py`) are users of this object: the same seed gives the same
outputs through any of them. Nothing here writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from crossmodal_jax import joint_run, tasks
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.data import audio
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.data.pipeline import pad_batch, unit_to_uint8
from crossmodal_jax.errors import UserError, one_line
from crossmodal_jax.experiment import Experiment, local_experiment
from crossmodal_jax.stages import joint
from crossmodal_jax.stages.generators import generator_entry, generator_stage
from crossmodal_jax.stages.tokenizer_source import attach_tokenizer
from crossmodal_jax.training.stage import restore_stage_state

# Batch sizes a request is cut into: 1 (one interactive request), 8 (a few batched together),
# 32 (bulk). A request of n inputs runs ceil(n / 32) batches, each of the smallest bucket it fits.
DEFAULT_BUCKETS = (1, 8, 32)
# What `generate` and `caption` may change of the config's generator.sample.
SAMPLE_KEYS = ("sampler", "steps", "guidance")


def buckets_up_to(largest: int) -> tuple[int, ...]:
    """DEFAULT_BUCKETS below `largest`, and `largest` (the sample CLI's --batch_size)."""
    if largest < 1:
        raise UserError(f"the batch size must be at least 1, got {largest}")
    return (*(b for b in DEFAULT_BUCKETS if b < largest), largest)


def chunks(n: int, buckets: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(start, size, bucket) of each batch of a request of n inputs."""
    top = buckets[-1]
    for start in range(0, n, top):
        size = min(top, n - start)
        yield start, size, next(b for b in buckets if b >= size)


def input_modality(item: Any) -> str:
    """The modality of one `caption` input: a path by its suffix; an array by its rank (uint8
    [H, W, C] image, [T, H, W, C] video); a (waveform, sample rate) pair is audio."""
    if isinstance(item, (str, os.PathLike)):
        suffix = os.path.splitext(str(item))[1].lower()
        for name, modality in MODALITIES.items():
            if suffix in modality.input_suffixes:
                return name
        known = sorted({s for m in MODALITIES.values() for s in m.input_suffixes})
        raise UserError(f"{item}: not an input file this project reads ({', '.join(known)})")
    if isinstance(item, tuple) and len(item) == 2:
        return "audio"
    rank = np.ndim(item)
    if rank in (3, 4):
        return "image" if rank == 3 else "video"
    raise UserError(
        f"an input array of shape {np.shape(item)}: expected an image [H, W, C], a video "
        "[T, H, W, C] or a (waveform, sample rate) pair"
    )


def _as_file(item: Any, modality: str, folder: str, index: int) -> str:
    """An in-memory input written as the file the sample CLI would read, so that arrays and
    files go through one reader (resizing, resampling, frame fitting)."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    path = os.path.join(folder, f"{index:06d}")
    if modality == "audio":
        from scipy.io import wavfile

        wave, rate = item
        wavfile.write(path + ".wav", int(rate), np.asarray(wave, np.float32))
        return path + ".wav"
    array = np.asarray(item)
    if array.dtype != np.uint8:
        raise UserError(f"input {index}: {modality} arrays are uint8 pixels, got {array.dtype}")
    if modality == "image":
        from PIL import Image

        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path + ".png")
        return path + ".png"
    np.save(path + ".npy", array)
    return path + ".npy"


@dataclasses.dataclass
class _Task:
    exp: Experiment
    state: Any = None  # the trained generator's TrainState, restored on first use


class Pipeline:
    """Generation and captioning with a trained workdir's generator (see the module docstring)."""

    def __init__(
        self,
        workdir: str,
        config,
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        devices: Sequence[Any] | None = None,
    ):
        if not buckets or any(b < 1 for b in buckets):
            raise UserError(f"buckets must be positive batch sizes, got {tuple(buckets)}")
        self.workdir = workdir
        self.config = config
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.devices = None if devices is None else list(devices)  # None: this process's all
        self._joint = config.task == tasks.JOINT
        names = sorted(config.tasks) if self._joint else [config.task]
        self.tasks: tuple[str, ...] = tuple(names)
        self._loaded: dict[str, _Task] | None = None
        self._samplers: dict[tuple, Any] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        devices: Sequence[Any] | None = None,
    ) -> Pipeline:
        """The pipeline of a workdir written by `crossmodal_jax.main`, data-parallel over
        `devices` (default: all of this process's); its weights are read on first use."""
        return cls(workdir, load_resolved_config(workdir), buckets=buckets, devices=devices)

    # ------------------------------------------------------------------ tasks and their state

    def task_for(self, source: str, task: str | None = None) -> str:
        """`task` checked, or the one task of this workdir whose input is `source`."""
        fits = [t for t in self.tasks if tasks.get_task(t).source == source]
        if task is not None:
            if task not in self.tasks:
                raise UserError(f"task {task!r}: this workdir has tasks {', '.join(self.tasks)}")
            if task not in fits:
                raise UserError(f"task {task!r} does not read {source} inputs")
            return task
        if len(fits) != 1:
            what = "several" if fits else "none"
            raise UserError(
                f"{source} inputs fit {what} of this workdir's tasks ({', '.join(self.tasks)})"
                + (": name one with task=" if fits else "")
            )
        return fits[0]

    def experiment(self, task: str) -> Experiment:
        """The task's Experiment (config, tokenizers, caption vocabulary), without weights."""
        with self._lock:
            if self._loaded is None:
                if self._joint:
                    exps = joint_run.local_task_experiments(self.config, self.workdir, self.devices)
                else:
                    exp = local_experiment(self.config, self.workdir, self.devices)
                    exps = {self.config.task: exp}
                self._loaded = {name: _Task(exp) for name, exp in exps.items()}
            return self._loaded[task].exp

    def _state(self, task: str):
        exp = self.experiment(task)
        with self._lock, jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
            if self._loaded[task].state is None:
                try:
                    self._restore(task)
                except FileNotFoundError as e:
                    raise UserError(one_line(e)) from e
            return self._loaded[task].state

    def _restore(self, task: str) -> None:
        if not self._joint:
            exp = self._loaded[task].exp
            attach_tokenizer(exp)  # a run's tokenizer_from another workdir
            self._loaded[task].state = restore_stage_state(generator_stage(exp), exp.ctx)
            return
        exps = {name: t.exp for name, t in self._loaded.items()}  # one joint state for all
        state = joint_run.restore_joint_state(self.config, self.workdir, exps)
        for name, t in self._loaded.items():
            t.state = joint.view_state(state, name)

    # ------------------------------------------------------------------------------- samplers

    def sample_settings(self, task: str, **overrides) -> dict[str, Any]:
        """The task's generator.sample with the given keys of SAMPLE_KEYS replaced (None: kept)."""
        unknown = sorted(set(overrides) - set(SAMPLE_KEYS))
        if unknown:
            raise UserError(
                f"unknown sampler setting {unknown[0]!r}; known: {', '.join(SAMPLE_KEYS)}"
            )
        sample = self.experiment(task).config.generator.sample
        settings = {k: sample[k] for k in SAMPLE_KEYS}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        if int(settings["steps"]) < 1:
            raise UserError(f"steps must be at least 1, got {settings['steps']}")
        settings["steps"], settings["guidance"] = (
            int(settings["steps"]),
            float(settings["guidance"]),
        )
        return settings

    def _sampler(self, task: str, settings: dict[str, Any]):
        key = (task, *sorted(settings.items()))
        with self._lock:
            if key not in self._samplers:
                exp = self.experiment(task)
                config = exp.config.copy_and_resolve_references()
                config.generator.sample.update(settings)
                variant = dataclasses.replace(exp, config=config, built={})
                try:
                    self._samplers[key] = generator_entry(variant).sampler(variant)
                except ValueError as e:  # an unknown sampler name, listing the known ones
                    raise UserError(one_line(e)) from e
            return self._samplers[key]

    # ------------------------------------------------------------------------------ requests

    def generate(
        self,
        prompts: Sequence[str],
        *,
        task: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """One image per prompt: uint8 [N, H, W, C]. A prompt with a word outside the caption
        vocabulary is refused in one line before anything is computed."""
        if isinstance(prompts, str):
            prompts = [prompts]
        task = self.task_for(tasks.TEXT, task)
        exp = self.experiment(task)
        for i, prompt in enumerate(prompts):
            unknown = exp.text.unknown_words(prompt)
            if unknown:
                raise UserError(
                    f"prompt {i} ({prompt!r}): the word {unknown[0]!r} is not in the vocabulary "
                    "this model was trained with (data.text_words)"
                )
        if not prompts:
            return np.zeros((0, *exp.input_shape), np.uint8)
        settings = self.sample_settings(task, steps=steps, guidance=guidance, sampler=sampler)
        state = self._state(task)  # first: a joint task's sampler runs the restored joint model
        fn, key, out = self._sampler(task, settings), jax.random.key(seed), []
        with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
            for start, size, bucket in chunks(len(prompts), self.buckets):
                ids, mask = exp.text.encode_batch(
                    prompts[start : start + size], exp.config.data.text_max_len
                )
                images = fn(
                    state.ema_params,
                    state.model_state,
                    pad_batch(ids, bucket),
                    pad_batch(mask, bucket),
                    jax.random.fold_in(key, start),
                )
                out.append(unit_to_uint8(np.asarray(images)[:size]))
        return np.concatenate(out)

    def read_inputs(self, inputs: Sequence[Any], task: str | None = None) -> tuple[str, list]:
        """(task, model batch entries of each input): every input read and checked, as the sample
        CLI reads files (other sizes resized, other rates resampled), before any compute."""
        if not len(inputs):
            raise UserError("no inputs to caption")
        kinds = {input_modality(item) for item in inputs}
        if len(kinds) != 1:
            raise UserError(f"one modality a call, got {', '.join(sorted(kinds))}")
        task = self.task_for(kinds.pop(), task)
        exp = self.experiment(task)
        paths_only = all(isinstance(item, (str, os.PathLike)) for item in inputs)
        with (
            contextlib.nullcontext("")
            if paths_only
            else tempfile.TemporaryDirectory(prefix="crossmodal-inputs-") as folder
        ):  # arrays are written there as the files they would be
            entries = []
            for i, item in enumerate(inputs):
                path = _as_file(item, exp.task.source, folder, i)
                try:
                    entries.append(exp.modality.read_input(path, exp.input_shape, exp.config.data))
                except (ValueError, OSError) as e:
                    raise UserError(one_line(e)) from e
        return task, entries

    def caption(
        self,
        inputs: Sequence[Any],
        *,
        task: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
    ) -> list[str]:
        """One caption per input: paths (.png, .wav, .gif/.npy/.mp4), uint8 image [H, W, C] or
        video [T, H, W, C] arrays, or (waveform, sample rate) pairs; one modality a call."""
        task, entries = self.read_inputs(inputs, task)
        return self.caption_entries(
            task, entries, steps=steps, guidance=guidance, sampler=sampler, seed=seed
        )

    def caption_entries(
        self, task: str, entries: list[dict[str, np.ndarray]], *, seed: int = 0, **sample
    ) -> list[str]:
        """Captions of inputs already read by `read_inputs`."""
        exp = self.experiment(task)
        settings = self.sample_settings(task, **sample)
        state = self._state(task)  # first: a joint task's sampler runs the restored joint model
        fn, key, texts, source = (
            self._sampler(task, settings),
            jax.random.key(seed),
            [],
            exp.task.source,
        )
        with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
            for start, size, bucket in chunks(len(entries), self.buckets):
                chunk = entries[start : start + size]
                batch = {k: pad_batch(np.stack([e[k] for e in chunk]), bucket) for k in chunk[0]}
                ids = fn(
                    state.ema_params,
                    state.model_state,
                    batch[source],
                    jax.random.fold_in(key, start),
                    batch.get(mask_key(source)),  # a padded clip's frame mask, or None
                )
                texts += exp.text.decode_batch(np.asarray(ids)[:size])
        return texts

    def warmup(self, task: str | None = None, **sample) -> None:
        """Compile the samplers of `task` (default: every task) for every bucket up front, with
        the given sampler settings (default: the config's)."""
        for name in [task] if task else self.tasks:
            exp = self.experiment(name)
            for bucket in self.buckets:
                if exp.task.source == tasks.TEXT:  # "": no word; a class model: class 0
                    prompt = "0" if exp.text.unknown_words("") else ""
                    self.generate([prompt] * bucket, task=name, **sample)
                else:
                    _, entries = self.read_inputs([blank_input(exp)] * bucket, name)
                    self.caption_entries(name, entries, **sample)


def blank_input(exp: Experiment) -> Any:
    """A one-second tone or a black picture of the task's input shape (warming up its sampler)."""
    if exp.task.source == "audio":
        t = np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
        return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), audio.SAMPLE_RATE
    return np.zeros(exp.input_shape, np.uint8)
