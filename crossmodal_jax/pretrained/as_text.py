"""A pretrained text encoder as a run's caption condition (`text_encoder` in a text→image config):
captions are tokenized by the encoder's own tokenizer in the data pipeline, and the frozen encoder
turns them into hidden states inside the step (stages/objectives.encoded_text).

`PretrainedText` has our caption tokenizer's interface (data.text.TextTokenizer: encode,
encode_batch, decode, decode_batch, vocab_size, ...), so datasets, prompts, sample grids and the
shapes judge (which reads the captions back) work unchanged. It is picklable (grain workers
rebuild the tokenizer from the folder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from crossmodal_jax.errors import UserError
from crossmodal_jax.pretrained.text_tokenizer import FolderTokenizer


class PretrainedText:
    words: tuple[str, ...] = ()  # no word vocabulary: the encoder's subword tokenizer
    unused_ids: tuple[int, ...] = ()

    def __init__(self, path: str, settings: dict[str, Any]):
        self.path, self.settings = str(path), dict(settings)
        self._tokenizer: FolderTokenizer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "settings": self.settings, "_tokenizer": None}

    @property
    def tokenizer(self) -> FolderTokenizer:
        if self._tokenizer is None:
            self._tokenizer = FolderTokenizer(self.path, self.settings)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.settings["vocab_size"])

    def length(self, text: str) -> int:
        ids, mask = self.tokenizer([text])
        return int(mask.sum())

    def unknown_words(self, text: str) -> list[str]:
        return []  # subwords cover any text

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 [max_len]: padded and truncated to max_len, as PixArt feeds T5."""
        ids, mask = self.tokenizer([text], max_length=max_len)
        return ids[0], mask[0]

    def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer(list(texts), max_length=max_len)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode(ids)

    def decode_batch(self, ids_NxL: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids_NxL)]

    def __repr__(self) -> str:
        return f"PretrainedText({self.path})"


def load_text_encoder(path: str, mesh, rules, where: str = "text_encoder"):
    """(module, variables, caption tokenizer, hidden width) of the pretrained T5 / CLIP text
    encoder at `path`; a one-line UserError for another kind."""
    from crossmodal_jax import pretrained

    part = pretrained.load(path, mesh=mesh, rules=rules)
    if part.kind not in ("t5", "clip_text"):
        raise UserError(f"{where}={path!r} is a {part.kind}, not a text encoder (t5 or clip_text)")
    text = PretrainedText(str(part.path), part.config)  # random:<kind> -> its folder
    text.tokenizer  # noqa: B018 - a missing tokenizer file is an error now, not in a worker
    width = part.config["d_model"] if part.kind == "t5" else part.config["hidden_size"]
    return part.module, {"params": part.params}, text, int(width)
