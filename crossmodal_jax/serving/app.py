"""The web demo's requests, without HTTP: checked, batched and answered over one Pipeline.

`Demo.generate(body)` and `Demo.caption(query, body)` take what the HTTP layer read
(`serving/server.py`) and return the JSON answer, or raise `UserError` (answered 400) with one
line. Everything a request can get wrong is checked on the request's own thread, before it
queues: fields, ranges, the prompt's words, the upload's suffix and header, and the upload read
into model inputs by `Pipeline.read_inputs` (files and NumPy, no JAX). On the model's thread,
reading 32 uploads one after another took longer than captioning them (0.7 ms each, against
17 ms for all 32 on 2 CPU cores). Whatever runs JAX runs on the batcher's one worker thread.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from concurrent.futures import Future
from typing import Any

import numpy as np

from crossmodal_jax import tasks
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError, one_line
from crossmodal_jax.pipeline import Pipeline, input_modality
from crossmodal_jax.serving import uploads
from crossmodal_jax.serving.batcher import Batcher, Busy

log = logging.getLogger("crossmodal_jax")

MAX_PROMPT_CHARS = 500
# Each distinct (steps, guidance, sampler) compiles samplers of its own (Pipeline caches them per
# setting), so the ranges are bounded; the page's sliders stay well inside them.
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
REQUEST_TIMEOUT_S = 600.0  # a request still queued after this answers 503
GENERATE_FIELDS = {"prompt", "task", "steps", "guidance", "sampler", "seed"}
CAPTION_PARAMS = {"name", "task", "steps", "guidance", "sampler", "seed"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_int(name: str, value: Any, lo: int, hi: int) -> int:
    """A JSON number or query string as an integer in [lo, hi], else a one-line UserError."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi:
        raise UserError(f"{name} must be an integer from {lo} to {hi}, got {_shown(value)}")
    return number


def parse_float(name: str, value: Any, lo: float, hi: float) -> float:
    """A JSON number or query string as a finite float in [lo, hi], else a one-line UserError."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number) or not lo <= number <= hi:
        raise UserError(f"{name} must be a number from {lo:g} to {hi:g}, got {_shown(value)}")
    return number


def _optional_str(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None  # the default
    if not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {_shown(value)}")
    return value


def png_data_url(image: np.ndarray) -> str:
    """uint8 [H, W, C] as a data: URL of a PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Demo:
    """The demo's request logic over `pipe`: see the module docstring and serving/batcher.py."""

    def __init__(
        self,
        pipe: Pipeline,
        *,
        batching: bool = True,
        batch_window_ms: float = 20.0,
        warmup: bool = False,
        max_upload_bytes: int = uploads.MAX_UPLOAD_BYTES,
        max_audio_s: float = uploads.MAX_AUDIO_SECONDS,
    ):
        self.pipe = pipe
        self.max_upload_bytes = max_upload_bytes
        self.max_audio_s = max_audio_s
        self.batcher = Batcher(
            self._run_batch,
            max_batch=pipe.buckets[-1],
            window_s=batch_window_ms / 1000,
            batching=batching,
        )
        # Each task's settings and tokenizer, read once on the worker (building the experiments
        # is JAX work); requests then check their fields against these without touching JAX.
        try:
            self._tasks: dict[str, dict[str, Any]] = self.batcher.call(self._describe).result()
            if warmup:  # every task's samplers for every bucket, with the default settings
                self.batcher.call(self._warmup).result()
        except BaseException:
            self.batcher.close()
            raise

    def close(self) -> None:
        self.batcher.close()

    def _warmup(self) -> None:
        for name in self.pipe.tasks:
            try:
                self.pipe.warmup(name)
            except UserError as e:  # serve anyway: the task's first request compiles instead
                log.warning("warming up %s failed, serving it cold: %s", name, one_line(e))

    def _describe(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.pipe.tasks:
            task, exp = tasks.get_task(name), self.pipe.experiment(name)
            out[name] = dict(
                source=task.source,
                target=task.target,
                defaults=self.pipe.sample_settings(name),
                text=exp.text,
            )
        return out

    # ----------------------------------------------------------------------------- answers

    def tasks_json(self) -> dict[str, Any]:
        """GET /api/tasks: each task's modalities and default sampler settings, and the limits."""
        listed = []
        for name, info in self._tasks.items():
            entry = dict(name=name, source=info["source"], target=info["target"])
            entry.update(info["defaults"])
            if info["source"] == tasks.TEXT:  # what a prompt may say (anything else is refused)
                entry["words"] = list(getattr(info["text"], "words", ()))
                entry["classes"] = list(getattr(info["text"], "classes", ()))  # class-conditional
            else:
                entry["suffixes"] = list(MODALITIES[info["source"]].input_suffixes)
            listed.append(entry)
        return dict(
            tasks=listed,
            batching=self.batcher.batching,
            max_batch=self.batcher.max_batch,
            limits=dict(
                max_upload_bytes=self.max_upload_bytes,
                max_audio_seconds=self.max_audio_s,
                max_steps=MAX_STEPS,
                max_guidance=MAX_GUIDANCE,
                max_seed=MAX_SEED,
                max_prompt_chars=MAX_PROMPT_CHARS,
            ),
        )

    def generate(self, body: bytes) -> dict[str, Any]:
        """POST /api/generate {prompt, task?, steps?, guidance?, sampler?, seed?} -> the image
        as a PNG data: URL at the model's resolution (the page enlarges it, pixelated: sending
        it enlarged would cost a larger PNG to encode and send for every request)."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"the request body is not JSON: {one_line(e)}") from None
        if not isinstance(request, dict):
            raise UserError("the request body must be a JSON object")
        unknown = sorted(set(request) - GENERATE_FIELDS)
        if unknown:
            fields = ", ".join(sorted(GENERATE_FIELDS))
            raise UserError(f"unknown field {unknown[0]!r}; the fields are {fields}")
        if "prompt" not in request:
            raise UserError("missing field: prompt")
        prompt = request["prompt"]
        if not isinstance(prompt, str):
            raise UserError(f"prompt must be a string, got {_shown(prompt)}")
        prompt = prompt.strip()
        if not prompt:
            raise UserError("empty prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"prompt of {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        task = self.pipe.task_for(tasks.TEXT, _optional_str("task", request.get("task")))
        text = self._tasks[task]["text"]
        words = text.unknown_words(prompt)
        if words and getattr(text, "classes", ()):
            examples = ", ".join(text.classes[:3])
            raise UserError(
                f"{prompt!r} is not one of this model's {len(text.classes)} classes: name one "
                f"by its caption or index ({examples}, ...)"
            )
        if words:
            raise UserError(
                f"the word {words[0]!r} is not in the vocabulary this model was trained with"
            )
        settings, seed = self._settings(task, request)
        image = self._wait(self.batcher.submit(("generate", task, _frozen(settings), seed), prompt))
        return dict(
            image=png_data_url(image),
            height=int(image.shape[0]),
            width=int(image.shape[1]),
            task=task,
            seed=seed,
            **settings,
        )

    def caption(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        """POST /api/caption?name=FILE&task=&steps=&guidance=&sampler=&seed= with the file's
        bytes as the body -> its caption. The file is read as the sample CLI reads it."""
        unknown = sorted(set(query) - CAPTION_PARAMS)
        if unknown:
            names = ", ".join(sorted(CAPTION_PARAMS))
            raise UserError(f"unknown parameter {unknown[0]!r}; the parameters are {names}")
        if not query.get("name"):
            raise UserError("missing parameter: name (the uploaded file's name)")
        name = uploads.clean_name(query["name"])
        suffix = os.path.splitext(name)[1].lower()
        task = self.pipe.task_for(input_modality(name), _optional_str("task", query.get("task")))
        settings, seed = self._settings(task, query)
        uploads.check_upload(name, suffix, body, max_audio_s=self.max_audio_s)
        with uploads.upload_file(body, suffix) as path:
            try:  # read as the sample CLI reads files: other sizes resized, rates resampled
                entries = self.pipe.read_inputs([path], task)[1]
            except UserError as e:  # the reader names the temporary file: show the upload's
                raise UserError(one_line(e).replace(path, name)) from None
        key = ("caption", task, _frozen(settings), seed)
        text = self._wait(self.batcher.submit(key, entries[0]))
        return dict(text=text, task=task, seed=seed, **settings)

    # ---------------------------------------------------------------------------- helpers

    def _settings(self, task: str, fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The task's sampler settings with the request's overrides, and its seed, checked the
        way Pipeline.sample_settings resolves them (so equal requests share one batch key)."""
        settings = dict(self._tasks[task]["defaults"])
        if fields.get("steps") not in (None, ""):
            settings["steps"] = parse_int("steps", fields["steps"], 1, MAX_STEPS)
        if fields.get("guidance") not in (None, ""):
            settings["guidance"] = parse_float("guidance", fields["guidance"], 0.0, MAX_GUIDANCE)
        sampler = _optional_str("sampler", fields.get("sampler"))
        if sampler is not None:
            settings["sampler"] = sampler  # an unknown name: the pipeline lists the known ones
        seed = fields.get("seed")
        return settings, 0 if seed in (None, "") else parse_int("seed", seed, 0, MAX_SEED)

    @staticmethod
    def _wait(future: Future) -> Any:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError:
            if future.done():
                raise  # the model call itself raised it
            future.cancel()
            raise Busy(f"no answer within {REQUEST_TIMEOUT_S:g} s: the server is busy") from None

    def _run_batch(self, key: tuple, payloads: list[Any]) -> list[Any]:
        """On the worker thread: one pipeline call for a batch of same-key requests."""
        kind, task, settings, seed = key
        sample = dict(settings)
        if kind == "generate":
            return list(self.pipe.generate(payloads, task=task, seed=seed, **sample))
        return self.pipe.caption_entries(task, payloads, seed=seed, **sample)


def _frozen(settings: dict[str, Any]) -> tuple:
    """Sampler settings as part of a batch key (hashable, order-free)."""
    return tuple(sorted(settings.items()))
