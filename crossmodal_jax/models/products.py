"""Products of low-precision operands that accumulate in float32, forward and backward.

A model in bfloat16 (`dtype`) multiplies bfloat16 operands into a float32 result and rounds it to
bfloat16 once, as GPUs and TPUs do anyway. On XLA:CPU it decides the speed: its bfloat16 x
bfloat16 -> bfloat16 product runs on a slow path (1.5x float32's time for a [4096, 384] x
[384, 1536] product) while bfloat16 -> float32 takes its AMX/oneDNN kernels (0.3x); a bfloat16
model is faster than a float32 one there only this way (docs/results.md). The gradient's two
products are written the same way (a custom VJP): jax's own transpose would multiply the float32
cotangent of the float32 product by a bfloat16 operand, a float32 product. Float32 operands take
jax's own product, unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def einsum(spec: str, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """jnp.einsum of two operands ("ab,bc->ac"), accumulated in float32 for low precision."""
    if jnp.result_type(lhs, rhs) == F32:
        return jnp.einsum(spec, lhs, rhs)
    operands, out = spec.split("->")
    a, b = operands.split(",")
    return _low_precision_product(lhs, rhs, (a, b, out), None)


def float32_accumulating_dot(lhs, rhs, dimension_numbers, precision=None, **_) -> jax.Array:
    """lax.dot_general for flax's Dense / DenseGeneral (`dot_general=`), accumulated in float32
    for low precision and returned in the operands' dtype."""
    if jnp.result_type(lhs, rhs) == F32:  # flax's own call, unchanged
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)
    return _low_precision_product(
        lhs, rhs, _subscripts(lhs.ndim, rhs.ndim, dimension_numbers), precision
    )


def _subscripts(lhs_ndim: int, rhs_ndim: int, dimension_numbers) -> tuple[str, str, str]:
    """dot_general's dimension numbers as einsum operands (lhs, rhs, out): batch axes first in
    the output, then lhs's kept axes, then rhs's, as dot_general orders them."""
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in range(lhs_ndim)]
    rhs = [""] * rhs_ndim
    for i, j in zip([*lc, *lb], [*rc, *rb], strict=True):
        rhs[j] = lhs[i]
    rhs = [r or next(letters) for r in rhs]
    out = [lhs[i] for i in lb]
    out += [lhs[i] for i in range(lhs_ndim) if i not in (*lc, *lb)]
    out += [rhs[j] for j in range(rhs_ndim) if j not in (*rc, *rb)]
    return "".join(lhs), "".join(rhs), "".join(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_product(lhs, rhs, subscripts: tuple[str, str, str], precision) -> jax.Array:
    a, b, out = subscripts
    out = jnp.einsum(f"{a},{b}->{out}", lhs, rhs, precision=precision, preferred_element_type=F32)
    return out.astype(jnp.result_type(lhs, rhs))


def _low_precision_product_fwd(lhs, rhs, subscripts, precision):
    return _low_precision_product(lhs, rhs, subscripts, precision), (lhs, rhs)


def _low_precision_product_bwd(subscripts, precision, operands, g):
    # The cotangent arrives in the operands' dtype: both products are low x low -> float32.
    lhs, rhs = operands
    a, b, out = subscripts
    kw = dict(precision=precision, preferred_element_type=F32)
    d_lhs = jnp.einsum(f"{out},{b}->{a}", g, rhs, **kw).astype(lhs.dtype)
    d_rhs = jnp.einsum(f"{a},{out}->{b}", lhs, g, **kw).astype(rhs.dtype)
    return d_lhs, d_rhs


_low_precision_product.defvjp(_low_precision_product_fwd, _low_precision_product_bwd)
