"""Scaled dot-product attention, one entry per implementation (`generator.model.attention`).

Every entry computes softmax(q·kᵀ/√H + mask)·v for q [B, T, N, H], k and v [B, S, N, H] and an
optional boolean key mask broadcastable to [B, N, T, S] (True = attend). A query must have one
unmasked key; masked keys then get exactly zero weight.

- "xla":     `jax.nn.dot_product_attention`, XLA's lowering (jax picks no fused kernel by itself).
- "einsum":  the same maths in a [B, N, T, H] layout, the score matrix materialised: on XLA:CPU it
             runs faster than "xla" (benchmarks/attention.py: 57 against 67 ms at DiT-S/2's shape).
- "blocked": memory-efficient attention in pure JAX (Rabe & Staats 2021; the FlashAttention
             recurrence): keys in blocks of `BLOCK`, an online softmax carries the running max and
             sum, and the backward pass recomputes each block (`jax.checkpoint`), so neither pass
             stores the [T, S] score matrix. For long sequences where no fused kernel exists.
- "cudnn":   cuDNN's fused flash-attention kernel (NVIDIA GPUs), computed in bfloat16 (float16
             stays): a head dim that is a multiple of 8 and at most 128 (256 from Hopper on).
- "splash":  the Pallas splash kernel of TPU v4 and newer (splash_attention.py): key masks of the
             key-padding form [B, 1, 1, S] only.
- "auto":    one of the above per call, from the first device and the shapes (`select_attention`):
             "cudnn" on an NVIDIA GPU where its constraints hold, "splash" on TPU v4+, `CPU_ATTENTION`
             on CPUs, else "xla"; a fallback from the platform's kernel is logged once per reason.

Sequence parallelism needs nothing here: the callers constrain queries to the `seq` axis and keys
and values to `kv_seq` (replicated), so a `sequence`-sharded activation gathers its keys and values
before attending (sharding.py).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models import products
from crossmodal_jax.models.splash_attention import splash_attention
from crossmodal_jax.training.sharding import SEQ

log = logging.getLogger("crossmodal_jax")

BLOCK = 512  # keys a block of "blocked" attention: [T, 512] scores live at a time
# "auto" on CPUs: forward + backward at DiT-S/2's shape (B 8, 6 heads, 256 tokens, head dim 64),
# float32, 2-core XLA:CPU, jax 0.10.2 (benchmarks/attention.py --repeats=10 --long=2048): "einsum"
# 57.1 ms, "xla" 66.9 ms, "blocked" 77.7 ms; 2,048 tokens: 353, 494 and 392 ms.
CPU_ATTENTION = "einsum"


def xla_attention(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def einsum_attention(q, k, v, mask=None):
    scale = q.shape[-1] ** -0.5
    q_BxNxTxH, k_BxNxSxH, v_BxNxSxH = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    # Both products of bfloat16 inputs accumulate in float32 (products.py says why), the softmax
    # runs in float32.
    logits = products.einsum("bnth,bnsh->bnts", q_BxNxTxH * scale, k_BxNxSxH)
    logits = logits.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out_BxNxTxH = products.einsum("bnts,bnsh->bnth", weights, v_BxNxSxH)
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


def _as_4d(mask):
    return mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))


def cudnn_inputs(q, k, v, mask=None):
    """The arguments of cuDNN's kernel: q, k, v in bfloat16 (float16 stays) and the mask as
    [B, 1 or N, T, S] (cuDNN reads a mask as a bias of the whole [T, S] extent). With a mask, T and
    S are padded to even lengths (its backward pass with a bias needs them): padded keys are
    masked, padded query rows (zeros) are for the caller to slice off."""
    dtype = q.dtype if q.dtype in (jnp.bfloat16, jnp.float16) else jnp.bfloat16
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    if mask is None:
        return q, k, v, None
    (b, t), s = q.shape[:2], k.shape[1]
    mask = _as_4d(mask)
    mask = jnp.broadcast_to(mask, (b, mask.shape[1], t, s))
    pad_t, pad_s = t % 2, s % 2
    if pad_t or pad_s:
        q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
        k, v = (jnp.pad(a, ((0, 0), (0, pad_s), (0, 0), (0, 0))) for a in (k, v))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad_s)), constant_values=False)
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_t), (0, 0)), constant_values=True)
    return q, k, v, mask


def cudnn_attention(q, k, v, mask=None):
    q_c, k_c, v_c, m = cudnn_inputs(q, k, v, mask)
    out = jax.nn.dot_product_attention(q_c, k_c, v_c, mask=m, implementation="cudnn")
    return out[:, : q.shape[1]].astype(q.dtype)


def key_mask_form(mask) -> str:
    """The form of a key mask: "none", "key_padding" (one mask per example over its keys:
    [B or 1, 1, 1, S]) or "general" (per head or per query)."""
    if mask is None:
        return "none"
    if mask.ndim > 4:
        return "general"
    shape = _as_4d(mask).shape
    return "key_padding" if shape[1] == shape[2] == 1 else "general"


def _hopper_or_later(device_kind: str, compute_capability: str | None) -> bool:
    if compute_capability:
        return int(str(compute_capability).split(".")[0]) >= 9
    return re.search(r"\bG?[HB]\d{2,3}\b", device_kind) is not None  # H100, H200, GH200, B200


def _tpu_generation(device_kind: str) -> int | None:
    found = re.search(r"TPU\s*v?(\d+)", device_kind, re.IGNORECASE)  # TPU v4, TPU v5 lite, TPU7x
    return int(found.group(1)) if found else None


def select_attention(
    platform: str,
    device_kind: str,
    q_shape: tuple[int, ...],
    dtype,
    mask_form: str = "none",
    *,
    compute_capability: str | None = None,
    queries_split: bool = False,
) -> tuple[str, str]:
    """What "auto" runs: (an entry of `ATTENTION`, why it is not the platform's kernel or "").

    `platform` and `device_kind` are a jax device's (`"gpu"`, `"NVIDIA H100 80GB HBM3"`; `"tpu"`,
    `"TPU v5 lite"`; `"cpu"`), `q_shape` [B, T, N, H], `dtype` the compute dtype, `mask_form`
    `key_mask_form`'s, `queries_split` whether a mesh axis splits the query sequence.
    """
    head_dim, dtype = q_shape[-1], jnp.dtype(dtype)
    if platform == "gpu":
        if "nvidia" not in device_kind.lower():
            return "xla", f"cuDNN attention needs an NVIDIA GPU, not {device_kind!r}"
        if dtype not in (jnp.bfloat16, jnp.float16):
            return "xla", f"cuDNN attention computes in bfloat16, the model in {dtype.name}"
        limit = 256 if _hopper_or_later(device_kind, compute_capability) else 128
        if head_dim % 8 or head_dim > limit:
            why = f"a multiple of 8 and at most {limit}, not {head_dim}"
            return "xla", f"cuDNN attention needs a head dim that is {why}"
        if queries_split:
            return "xla", "cuDNN attention cannot split the query sequence over a mesh axis"
        return "cudnn", ""
    if platform == "tpu":
        generation = _tpu_generation(device_kind)
        if generation is None or generation < 4:
            return "xla", f"splash attention needs TPU v4 or newer, not {device_kind!r}"
        if mask_form == "general":
            return "xla", "splash attention takes key-padding masks [B, 1, 1, S] only"
        return "splash", ""
    if platform == "cpu":
        return CPU_ATTENTION, ""
    return "xla", ""


_LOGGED: set[str] = set()  # fallback reasons already logged


def _device() -> tuple[str, str, str | None]:
    device = jax.devices()[0]
    return device.platform, device.device_kind, getattr(device, "compute_capability", None)


def _queries_split(queries: int) -> bool:
    """Whether the mesh in context splits `queries` tokens (`sharding.constrain`'s rule: an axis
    that does not divide them leaves them whole)."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return False
    axes = nn.logical_to_mesh_axes((SEQ,), rules)[0]
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names if a in mesh.axis_names]))
    return size > 1 and queries % size == 0


def auto_attention(q, k, v, mask=None):
    platform, kind, capability = _device()
    impl, reason = select_attention(
        platform,
        kind,
        q.shape,
        q.dtype,
        key_mask_form(mask),
        compute_capability=capability,
        queries_split=_queries_split(q.shape[1]),
    )
    if reason and reason not in _LOGGED:
        _LOGGED.add(reason)
        log.info("attention 'auto' runs %r on %s (%s): %s", impl, platform, kind, reason)
    return ATTENTION[impl](q, k, v, mask)


ATTENTION: dict[str, Callable] = {
    "xla": xla_attention,
    "einsum": einsum_attention,
    "blocked": blocked_attention,
    "cudnn": cudnn_attention,
    "splash": splash_attention,
    "auto": auto_attention,
}


def attend(q, k, v, mask=None, *, impl: str = "xla") -> jax.Array:
    """Attention by the named implementation (a key of `ATTENTION`)."""
    if impl not in ATTENTION:
        raise ValueError(f"unknown attention {impl!r}; available: {', '.join(ATTENTION)}")
    return ATTENTION[impl](q, k, v, mask)
