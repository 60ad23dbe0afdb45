"""Shared by the peer-equality tests: a data x fsdp x tensor mesh of the 8 fake CPU devices and
the comparison every part's test makes."""

from __future__ import annotations

import numpy as np

from crossmodal_jax.training.sharding import make_mesh


def mesh_2x2x2():
    """data=2, fsdp=2, tensor=2 over the 8 CPU devices of tests/conftest.py."""
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def max_err(got, want, scale: float | None = None) -> float:
    """max |got - want|, over the reference's range when `scale` is None (the issue's tolerance
    is "within 1e-4 of their range")."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if scale is None:
        scale = max(float(want.max() - want.min()), 1e-12)
    return float(np.abs(got - want).max()) / scale


def assert_tokenize_equals(part, reference, cases) -> None:
    """part.tokenize gives what a transformers tokenizer gives for each (texts, max_length):
    padded to the longest (None) or to max_length, truncated, as int32."""
    for texts, max_length in cases:
        padding = "max_length" if max_length else True
        want = reference(texts, padding=padding, truncation=True, max_length=max_length)
        ids, mask = part.tokenize(texts, max_length=max_length)
        assert ids.dtype == np.int32 and mask.dtype == np.int32
        np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
        np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"]))
