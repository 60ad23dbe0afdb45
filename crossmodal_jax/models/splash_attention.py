"""Splash attention (Pallas, TPU v4 and newer) behind the signature of attention.py's table.

`splash_attention(q [B, T, N, H], k, v [B, S, N, H], mask)` computes what "xla" does with JAX's
Pallas splash kernel (`jax.experimental.pallas.ops.tpu.splash_attention`), which takes one
example at a time in a [N, L, H] layout. Around it:

- the head dim is zero-padded to a multiple of 128 (the TPU's lanes): zeros leave q·k and the
  kept columns of the output unchanged, and q is pre-scaled by the ORIGINAL head dim's 1/√H
  (the kernel does not scale);
- both sequences are zero-padded to a multiple of their block (128 up to `MAX_BLOCK`); padded
  keys are masked out with segment ids (a query attends to keys of its own segment: queries are
  segment 1, kept keys 1, masked and padded keys 0) and padded query rows are sliced off;
- a key mask must be a per-example key-padding mask [B or 1, 1, 1, S] (what the DiT passes for
  captions and padded condition tokens); any other form is refused with a ValueError;
- a query whose keys are all masked gets a finite average, not NaN (the caller discards it, as
  conditioning.py does for a dropped condition);
- under a mesh with more than one device the kernel runs inside `shard_map` (Mosaic kernels
  cannot be partitioned automatically): batch, queries and heads split as the logical axis
  rules say (BATCH, SEQ, HEADS), keys and values whole along their sequence.

`INTERPRET = True` (or `interpret=True`) runs the kernel in Pallas interpret mode on any backend:
slow, for tests on CPU. Off TPU without it, the call is refused.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from crossmodal_jax.training.sharding import BATCH, DEFAULT_RULES, HEADS, SEQ

INTERPRET = False  # run in Pallas interpret mode (any backend, slow): for tests on CPU
LANES = 128  # head dims and blocks are multiples of this
MAX_BLOCK = 512  # the largest query or key block


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def key_segment_ids(mask, batch: int, keys: int) -> jax.Array | None:
    """A key-padding mask [B or 1, 1, 1, S] (or lower rank, broadcastable) -> int32 [B, S]
    segment ids (1 = attend); None stays None. Any other mask raises ValueError."""
    if mask is None:
        return None
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    if mask.ndim > 4 or shape[1] != 1 or shape[2] != 1 or shape[0] not in (1, batch):
        raise ValueError(
            f"splash attention takes a key-padding mask [B, 1, 1, S] only (one mask per example "
            f"over its keys), not one of shape {tuple(mask.shape)}; use another attention"
        )
    return jnp.broadcast_to(mask.reshape(shape[0], shape[3]), (batch, keys)).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, q_len: int, kv_len: int, block_q: int, block_kv: int, interpret: bool):
    blocks = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    full = splash_mask.MultiHeadMask([splash_mask.FullMask((q_len, kv_len))] * heads)
    return splash.make_splash_mha_single_device(full, block_sizes=blocks, interpret=interpret)


def _local_splash(q, k, v, kv_ids, *, interpret: bool):
    """Splash attention of local (unsharded) arrays, vmapped over the batch."""
    b, t, n, h = q.shape
    s = k.shape[1]
    hp = _round_up(h, LANES)
    block_q = min(MAX_BLOCK, _round_up(t, LANES))
    block_kv = min(MAX_BLOCK, _round_up(s, LANES))
    tp, sp = _round_up(t, block_q), _round_up(s, block_kv)

    def kernel_layout(x, length, padded):  # [B, L, N, H] -> [B, N, padded, hp]
        x = jnp.swapaxes(x, 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, padded - length), (0, hp - h)))

    q_p = kernel_layout(q * jnp.asarray(h**-0.5, q.dtype), t, tp)
    k_p, v_p = (kernel_layout(a, s, sp) for a in (k, v))
    kernel = _kernel(n, tp, sp, block_q, block_kv, interpret)
    if kv_ids is None and sp > s:
        kv_ids = jnp.ones((b, s), jnp.int32)
    if kv_ids is None:
        out = jax.vmap(kernel)(q_p, k_p, v_p)
    else:
        ids = splash.SegmentIds(
            q=jnp.ones((b, tp), jnp.int32), kv=jnp.pad(kv_ids, ((0, 0), (0, sp - s)))
        )
        out = jax.vmap(kernel)(q_p, k_p, v_p, ids)
    return jnp.swapaxes(out[:, :, :t, :h], 1, 2).astype(q.dtype)


def _mesh_axes(logical: str, rules, mesh, dim: int):
    """The mesh axes that `rules` give the logical axis, if they divide `dim` (else None)."""
    axes = nn.logical_to_mesh_axes((logical,), rules)[0]
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(a for a in names if a in mesh.axis_names and a not in mesh.manual_axes)
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    return names if names and dim % size == 0 else None


def splash_attention(q, k, v, mask=None, *, interpret: bool | None = None) -> jax.Array:
    """Attention by the Pallas splash kernel (see the module docstring)."""
    interpret = INTERPRET if interpret is None else interpret
    platform = jax.devices()[0].platform
    if not interpret and platform != "tpu":
        raise ValueError(
            f"splash attention is a TPU kernel and this is {platform}: use another attention, "
            "or set models.splash_attention.INTERPRET = True (Pallas interpret mode, slow)"
        )
    b, t, n, _ = q.shape
    kv_ids = key_segment_ids(mask, b, k.shape[1])
    local = functools.partial(_local_splash, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.are_all_axes_manual:
        return local(q, k, v, kv_ids)
    rules = nn.get_logical_axis_rules() or DEFAULT_RULES
    batch = _mesh_axes(BATCH, rules, mesh, b)
    heads = _mesh_axes(HEADS, rules, mesh, n)
    q_spec = P(batch, _mesh_axes(SEQ, rules, mesh, t), heads, None)
    kv_spec = P(batch, None, heads, None)  # keys and values whole along their sequence
    args, specs = (q, k, v), (q_spec, kv_spec, kv_spec)
    if kv_ids is not None:
        args, specs = (*args, kv_ids), (*specs, P(batch, None))
    run = jax.shard_map(
        lambda *a: local(*a) if len(a) == 4 else local(*a, None),
        mesh=mesh,
        in_specs=specs,
        out_specs=q_spec,
        check_vma=False,
    )
    return run(*args)
