"""Text tokenizers: UTF-8 bytes (default: fixed vocabulary, no training, works for any language)
and, for captions over a small closed vocabulary, one token per word (TextTokenizer).

Ids 0..2 are special tokens; byte ``b`` maps to id ``b + BYTE_OFFSET``. ``MASK_ID`` is the
absorbing state of masked (discrete) diffusion: in the vocabulary, never produced by ``encode``.
"""

from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID = 0
EOS_ID = 1
MASK_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET  # 259


def encode(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Encodes ``text`` into ``(ids, mask)``, both int32 ``[max_len]``.

    Layout: UTF-8 bytes, then EOS, then PAD. Bytes are truncated to ``max_len - 1`` so EOS always
    fits (a truncated multi-byte character decodes to U+FFFD rather than failing). ``mask`` is 1 on
    real tokens, EOS included, and 0 on PAD.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1 so that EOS fits, got {max_len}")
    data_L = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[: max_len - 1]
    n = int(data_L.shape[0])
    ids_L = np.full((max_len,), PAD_ID, dtype=np.int32)
    ids_L[:n] = data_L.astype(np.int32) + BYTE_OFFSET
    ids_L[n] = EOS_ID
    mask_L = np.zeros((max_len,), dtype=np.int32)
    mask_L[: n + 1] = 1
    return ids_L, mask_L


def encode_batch(texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Encodes several texts: returns ``(ids [N, max_len], mask [N, max_len])``, int32."""
    return BYTES.encode_batch(texts, max_len)


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """Decodes ids to text: stops at the first EOS, skips PAD/MASK (a sampler may leave some).

    Any id outside the byte range is skipped too, and invalid UTF-8 becomes U+FFFD, so decoding
    model samples never raises.
    """
    out = bytearray()
    for token in np.asarray(ids).reshape(-1).tolist():
        if token == EOS_ID:
            break
        byte = token - BYTE_OFFSET
        if 0 <= byte < 256:
            out.append(byte)
    return out.decode("utf-8", errors="replace")


def decode_batch(ids_NxL: np.ndarray) -> list[str]:
    """Decodes each row of ``ids_NxL``."""
    return BYTES.decode_batch(ids_NxL)


# --- Word-level vocabulary --------------------------------------------------------------------
# A caption drawn from a small closed vocabulary ("the digit seven moves up", "three seven one")
# is 5-7 words but 24-40 bytes. Byte-level masked diffusion must then also place every letter:
# later words shift with the lengths of earlier ones, and a sampler that commits one byte at a
# time can spell a word that does not exist ("seve zone"). One token per word removes both.
# Ids 0..2 are shared with the byte layout (so MASK_ID is the absorbing state for either); 3 is
# the unknown word; word i of the vocabulary is id i + WORD_OFFSET.
UNK_ID = 3
WORD_OFFSET = 4


def caption_words(captions: Iterable[str]) -> str:
    """The sorted, space-separated distinct words of ``captions``: a ``data.text_words`` value."""
    return " ".join(sorted({w for c in captions for w in c.split()}))


def stack_encoded(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded (ids, mask) pairs -> (ids [N, max_len], mask [N, max_len]), int32 (N may be 0)."""
    if not pairs:
        empty_NxL = np.zeros((0, max_len), dtype=np.int32)
        return empty_NxL, empty_NxL.copy()
    return np.stack([i for i, _ in pairs]), np.stack([m for _, m in pairs])


class TextTokenizer:
    """Text <-> ids: UTF-8 bytes when ``words`` is empty, else one id per vocabulary word.

    Picklable (holds only a tuple of str), so grain workers can use it in their transforms.
    """

    def __init__(self, words: Sequence[str] = ()):
        self.words = tuple(words)
        if len(set(self.words)) != len(self.words):
            raise ValueError("text vocabulary has repeated words")
        if any(not w or any(ch.isspace() for ch in w) for w in self.words):
            raise ValueError("text vocabulary words must be non-empty and contain no whitespace")
        self._ids = {w: i + WORD_OFFSET for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words) + WORD_OFFSET if self.words else VOCAB_SIZE

    @property
    def unused_ids(self) -> tuple[int, ...]:
        """Ids a sampler must never emit besides MASK_ID (the unknown word)."""
        return (UNK_ID,) if self.words else ()

    def length(self, text: str) -> int:
        """Tokens of ``text`` before EOS (what must fit in ``max_len - 1``)."""
        return len(text.split()) if self.words else len(text.encode("utf-8"))

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` outside the vocabulary (always [] for bytes)."""
        return [w for w in text.split() if w not in self._ids] if self.words else []

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Like the module-level ``encode``: ``(ids, mask)`` int32 [max_len], EOS after the text."""
        if not self.words:
            return encode(text, max_len)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1 so that EOS fits, got {max_len}")
        tokens = [self._ids.get(w, UNK_ID) for w in text.split()][: max_len - 1]
        ids_L = np.full((max_len,), PAD_ID, dtype=np.int32)
        ids_L[: len(tokens)] = tokens
        ids_L[len(tokens)] = EOS_ID
        mask_L = np.zeros((max_len,), dtype=np.int32)
        mask_L[: len(tokens) + 1] = 1
        return ids_L, mask_L

    def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Encodes several texts: ``(ids [N, max_len], mask [N, max_len])``, int32."""
        return stack_encoded([self.encode(t, max_len) for t in texts], max_len)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Stops at the first EOS; PAD, MASK and unknown ids are skipped, so it never raises."""
        if not self.words:
            return decode(ids)
        out = []
        for token in np.asarray(ids).reshape(-1).tolist():
            if token == EOS_ID:
                break
            if WORD_OFFSET <= token < self.vocab_size:
                out.append(self.words[token - WORD_OFFSET])
        return " ".join(out)

    def decode_batch(self, ids_NxL: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids_NxL)]

    def __repr__(self) -> str:
        return f"TextTokenizer(words={len(self.words)})" if self.words else "TextTokenizer(bytes)"


BYTES = TextTokenizer()  # the UTF-8 byte tokenizer behind the module-level functions


# --- Class labels ---------------------------------------------------------------------------------
# A class-conditional generator (ImageNet's DiT) is conditioned on a label, not on words. Each
# caption of a label dataset is one of its class captions, so the captions *are* the labels: the
# tokenizer maps a caption to its class index in position 0 (the DiT's label embedding reads it;
# an all-zero mask is the null label of classifier-free guidance), and back. Prompts may name a
# class by its caption or by its index ("207").


class ClassTokenizer:
    """Caption <-> class index, with the caption tokenizer's interface (TextTokenizer).

    ids [max_len]: the class index, then PAD; mask [max_len]: 1, then 0. Picklable.
    """

    words: tuple[str, ...] = ()
    unused_ids: tuple[int, ...] = ()

    def __init__(self, classes: Sequence[str]):
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError("a class tokenizer needs at least one class")
        self._ids = {c: i for i, c in enumerate(self.classes)}

    @property
    def vocab_size(self) -> int:
        return len(self.classes)

    def class_index(self, text: str) -> int | None:
        """The class a prompt names (its caption or its index), or None."""
        text = " ".join(text.split())
        if text in self._ids:
            return self._ids[text]
        if text.isdigit() and int(text) < len(self.classes):
            return int(text)
        return None

    def length(self, text: str) -> int:
        return 1

    def unknown_words(self, text: str) -> list[str]:
        """[text] unless it names a class: a class-conditional model has no other prompts."""
        return [] if self.class_index(text) is not None else [text]

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """An empty caption is the null label (an all-zero mask: unconditional)."""
        ids_L = np.full((max_len,), PAD_ID, dtype=np.int32)
        mask_L = np.zeros((max_len,), dtype=np.int32)
        if not text.strip():
            return ids_L, mask_L
        index = self.class_index(text)
        if index is None:
            shown = ", ".join(self.classes[:3])
            raise ValueError(
                f"{text!r} is not one of the {len(self.classes)} classes ({shown}, ...)"
            )
        ids_L[0], mask_L[0] = index, 1
        return ids_L, mask_L

    def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return stack_encoded([self.encode(t, max_len) for t in texts], max_len)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        index = int(np.asarray(ids).reshape(-1)[0])
        return self.classes[index] if 0 <= index < len(self.classes) else ""

    def decode_batch(self, ids_NxL: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids_NxL)]

    def __repr__(self) -> str:
        return f"ClassTokenizer(classes={len(self.classes)})"
