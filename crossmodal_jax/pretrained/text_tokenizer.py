"""The text tokenizer that ships with a pretrained text encoder, read without transformers.

`FolderTokenizer(path, settings)(texts, max_length=None)` gives what transformers'
`AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True)` gives (with
`max_length`: `padding="max_length", truncation=True, max_length=max_length`), as int32 numpy
`(input_ids, attention_mask)` [B, L].

Where the files are: the encoder's own folder (transformers layout), else its diffusers sibling
(`text_encoder` -> `tokenizer`, `text_encoder_2` -> `tokenizer_2`). What is read, in order:
- `tokenizer.json`, with the `tokenizers` library: the whole pipeline (normalizer, pre-tokenizer,
  model, special tokens, post-processor) is in that one file;
- for CLIP, `vocab.json` + `merges.txt` (older Stable Diffusion folders have no tokenizer.json):
  CLIP's byte-level BPE pipeline is rebuilt as transformers' CLIPTokenizer builds it;
- `spiece.model` alone (older T5 folders), only if the optional `sentencepiece` is installed.
Padding side, truncation side, pad token and `model_max_length` come from
`tokenizer_config.json` (else `special_tokens_map.json`, else the family's defaults).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal_jax.errors import CheckpointError

# transformers writes 1e30 (VERY_LARGE_INTEGER) when a tokenizer has no length limit: no limit.
_NO_LIMIT = 10**6
# T5 has relative positions and so no hard limit; its pretraining length bounds the default.
_T5_DEFAULT_MAX = 512
_DEFAULT_PAD = {"t5": "<pad>", "clip": "<|endoftext|>"}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    return value if isinstance(value, dict) else {}


def tokenizer_folder(path: str | os.PathLike) -> Path:
    """The folder holding the tokenizer files for the encoder at `path` (see module docstring)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    names = ("tokenizer.json", "vocab.json", "spiece.model")
    candidates = [folder]
    if "text_encoder" in folder.name:
        candidates.append(folder.parent / folder.name.replace("text_encoder", "tokenizer"))
    for candidate in candidates:
        if any((candidate / name).exists() for name in names):
            return candidate
    raise CheckpointError(
        f"{folder}: no tokenizer.json (looked in {', '.join(str(c) for c in candidates)}); "
        "save the model's tokenizer next to it (tokenizer.save_pretrained)"
    )


def _clip_bpe(folder: Path):
    """CLIP's tokenizer from vocab.json + merges.txt, built as transformers' CLIPTokenizer does."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = _json(folder / "vocab.json")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    tk = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token="<|endoftext|>",
        )
    )
    tk.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tk.add_special_tokens([bos, eos])
    tk.post_processor = processors.RobertaProcessing(
        (eos, tk.token_to_id(eos)),
        (bos, tk.token_to_id(bos)),
        trim_offsets=False,
        add_prefix_space=False,
    )
    return tk


class _SentencePiece:
    """spiece.model through sentencepiece: pieces then `</s>`, as T5's slow tokenizer does."""

    def __init__(self, path: Path):
        try:
            import sentencepiece
        except ImportError:
            raise CheckpointError(
                f"{path.parent}: has only spiece.model; reading it needs `pip install "
                "sentencepiece`, or save the tokenizer.json of the model's fast tokenizer there"
            ) from None
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        del skip_special_tokens  # sentencepiece renders no control piece (pad, </s>)
        return self.sp.decode(ids)

    def encode(self, texts: Sequence[str], limit: int | None) -> list[list[int]]:
        out = []
        for ids in self.sp.encode(list(texts)):
            ids = ids[: limit - 1] if limit else ids  # room for the end-of-sequence id
            out.append([*ids, self.sp.eos_id()])
        return out


class FolderTokenizer:
    """A folder's text tokenizer: `(texts, max_length=None) -> (input_ids, attention_mask)`."""

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any] | None = None):
        settings = settings or {}
        family = settings.get("family", "t5")
        self.folder = tokenizer_folder(path)
        config = _json(self.folder / "tokenizer_config.json")
        special = _json(self.folder / "special_tokens_map.json")
        self.padding_side = str(config.get("padding_side", "right"))
        self.truncation_side = str(config.get("truncation_side", "right"))
        if (self.folder / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            self.backend: Any = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        elif family == "clip" and (self.folder / "merges.txt").exists():
            self.backend = _clip_bpe(self.folder)
        elif (self.folder / "spiece.model").exists():
            self.backend = _SentencePiece(self.folder / "spiece.model")
        else:
            raise CheckpointError(f"{self.folder}: no tokenizer.json")
        self.pad_token = (
            _token(config.get("pad_token"))
            or _token(special.get("pad_token"))
            or _DEFAULT_PAD[family]
        )
        pad_id = self.backend.token_to_id(self.pad_token)
        self.pad_id = int(pad_id if pad_id is not None else settings.get("pad_token_id", 0))
        # The longest sequence a text becomes: the tokenizer's own limit, never more positions
        # than the encoder has (CLIP's max_position_embeddings).
        limits = [int(settings["max_positions"])] if settings.get("max_positions") else []
        stated = config.get("model_max_length")
        if isinstance(stated, (int, float)) and 0 < stated < _NO_LIMIT:
            limits.append(int(stated))
        self.model_max_length = min(limits) if limits else _T5_DEFAULT_MAX

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Token ids -> text, special tokens (padding, end of text) left out."""
        return self.backend.decode(
            [int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True
        )

    def __call__(
        self, texts: str | Sequence[str], max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, int32 [B, L]: padded to the longest text (truncated at
        `model_max_length`), or with `max_length` padded and truncated to exactly that."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = int(max_length) if max_length is not None else self.model_max_length
        if isinstance(self.backend, _SentencePiece):
            rows = self.backend.encode(texts, limit)
        else:
            tk = self.backend
            tk.no_padding()
            tk.enable_truncation(limit, direction=self.truncation_side)
            rows = [e.ids for e in tk.encode_batch(texts, add_special_tokens=True)]
        width = max_length if max_length is not None else max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            span = (
                slice(0, len(row))
                if self.padding_side == "right"
                else slice(width - len(row), width)
            )
            ids[i, span], mask[i, span] = row, 1
        return ids, mask
