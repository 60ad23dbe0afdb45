"""UTF-8 byte tokenizer: fixed vocabulary, no training, works for any language.

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
    pairs = [encode(t, max_len) for t in texts]
    if not pairs:
        empty_NxL = np.zeros((0, max_len), dtype=np.int32)
        return empty_NxL, empty_NxL.copy()
    ids_NxL = np.stack([ids for ids, _ in pairs])
    mask_NxL = np.stack([mask for _, mask in pairs])
    return ids_NxL, mask_NxL


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
    return [decode(row) for row in np.asarray(ids_NxL)]
