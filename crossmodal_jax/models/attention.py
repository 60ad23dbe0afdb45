"""Scaled dot-product attention, one entry per implementation (`generator.model.attention`).

Every entry computes softmax(q·kᵀ/√H + mask)·v for q [B, T, N, H], k and v [B, S, N, H] and an
optional boolean key mask broadcastable to [B, N, T, S] (True = attend). A query must have one
unmasked key; masked keys then get exactly zero weight.

- "xla":     `jax.nn.dot_product_attention` (XLA's, or cuDNN's fused kernel where there is one).
- "einsum":  the same maths in a [B, N, T, H] layout, the score matrix materialised: on XLA:CPU it
             ran faster than "xla" (benchmarks/attention.py).
- "blocked": memory-efficient attention in pure JAX (Rabe & Staats 2021; the FlashAttention
             recurrence): keys in blocks of `BLOCK`, an online softmax carries the running max and
             sum, and the backward pass recomputes each block (`jax.checkpoint`), so neither pass
             stores the [T, S] score matrix. For long sequences where no fused kernel exists.

Sequence parallelism needs nothing here: the callers constrain queries to the `seq` axis and keys
and values to `kv_seq` (replicated), so a `sequence`-sharded activation gathers its keys and values
before attending (sharding.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

BLOCK = 512  # keys a block of "blocked" attention: [T, 512] scores live at a time


def xla_attention(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def einsum_attention(q, k, v, mask=None):
    scale = q.shape[-1] ** -0.5
    q_BxNxTxH, k_BxNxSxH, v_BxNxSxH = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    logits = jnp.einsum("bnth,bnsh->bnts", q_BxNxTxH * scale, k_BxNxSxH)
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out_BxNxTxH = jnp.einsum("bnts,bnsh->bnth", weights, v_BxNxSxH)
    return jnp.swapaxes(out_BxNxTxH, 1, 2)


def blocked_attention(q, k, v, mask=None, block: int = BLOCK):
    b, t, n, h = q.shape
    s = k.shape[1]
    block = min(block, s)
    pad = -s % block
    mask = jnp.ones((1, 1, 1, s), bool) if mask is None else mask
    mask = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], mask.shape[2], s))
    if pad:  # padded keys are masked out
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
    nb = (s + pad) // block
    # [blocks, B, block, N, H] keys and values; [blocks, mb, mn, mt, block] mask.
    k_blocks = k.reshape(b, nb, block, n, h).swapaxes(0, 1)
    v_blocks = v.reshape(b, nb, block, n, h).swapaxes(0, 1)
    m_blocks = jnp.moveaxis(mask.reshape(*mask.shape[:3], nb, block), 3, 0)
    q_scaled = q.astype(jnp.float32) * h**-0.5
    neg = jnp.finfo(jnp.float32).min

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one_block(carry, xs):
        acc_BxNxTxH, max_BxNxT, sum_BxNxT = carry
        k_blk, v_blk, m_blk = xs
        logits = jnp.einsum("btnh,bsnh->bnts", q_scaled, k_blk.astype(jnp.float32))
        logits = jnp.where(m_blk, logits, neg)
        new_max = jnp.maximum(max_BxNxT, logits.max(-1))
        correction = jnp.exp(max_BxNxT - new_max)
        p = jnp.where(m_blk, jnp.exp(logits - new_max[..., None]), 0.0)
        sum_BxNxT = sum_BxNxT * correction + p.sum(-1)
        pv = jnp.einsum("bnts,bsnh->bnth", p, v_blk.astype(jnp.float32))
        acc_BxNxTxH = acc_BxNxTxH * correction[..., None] + pv
        return (acc_BxNxTxH, new_max, sum_BxNxT), None

    init = (
        jnp.zeros((b, n, t, h), jnp.float32),
        jnp.full((b, n, t), neg, jnp.float32),
        jnp.zeros((b, n, t), jnp.float32),
    )
    (acc, _, total), _ = jax.lax.scan(one_block, init, (k_blocks, v_blocks, m_blocks))
    out_BxNxTxH = acc / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)[..., None]
    return jnp.swapaxes(out_BxNxTxH, 1, 2).astype(q.dtype)


ATTENTION: dict[str, Callable] = {
    "xla": xla_attention,
    "einsum": einsum_attention,
    "blocked": blocked_attention,
}


def attend(q, k, v, mask=None, *, impl: str = "xla") -> jax.Array:
    """Attention by the named implementation (a key of `ATTENTION`)."""
    if impl not in ATTENTION:
        raise ValueError(f"unknown attention {impl!r}; available: {', '.join(ATTENTION)}")
    return ATTENTION[impl](q, k, v, mask)
