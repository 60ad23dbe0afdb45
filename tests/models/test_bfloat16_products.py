"""bfloat16 compute accumulates its products in float32: the dense layers and the einsum
attention hand XLA bfloat16 operands with a float32 result (what GPUs and TPUs do, and what
XLA:CPU's fast bfloat16 kernels need), then return the compute dtype."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.models import attention, layers, products


def _dot_eqns(fn, *args):
    """(operand dtypes, preferred_element_type) of every dot_general in fn's jaxpr."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    found = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(
                    (tuple(v.aval.dtype for v in eqn.invars), eqn.params["preferred_element_type"])
                )
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr)
    return found


def test_float32_accumulating_dot_keeps_float32_exact_and_rounds_bfloat16_once():
    a = jax.random.normal(jax.random.key(0), (16, 384))
    b = jax.random.normal(jax.random.key(1), (384, 32))
    dims = (((1,), (0,)), ((), ()))
    np.testing.assert_array_equal(
        products.float32_accumulating_dot(a, b, dims), jax.lax.dot_general(a, b, dims)
    )
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    got = products.float32_accumulating_dot(a16, b16, dims)
    assert got.dtype == jnp.bfloat16
    # The float32 sum of exact bfloat16 products, rounded to bfloat16 once: within half a
    # bfloat16 ulp (2^-8 relative) of it, where summing in bfloat16 drifts further.
    want = jnp.dot(a16.astype(jnp.float32), b16.astype(jnp.float32))
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=1e-6)


def test_bfloat16_dense_layers_and_einsum_attention_ask_for_float32_products():
    x = jnp.ones((2, 5, 8), jnp.bfloat16)
    for module in (
        layers.dense(16, (None, None), dtype=jnp.bfloat16),
        layers.dense_general((8,), (2, 4), (None, None, None), dtype=jnp.bfloat16),
    ):
        params = module.init(jax.random.key(0), x)
        out = module.apply(params, x)
        assert out.dtype == jnp.bfloat16
        assert _dot_eqns(lambda p, x, m=module: m.apply(p, x), params, x) == [
            ((jnp.bfloat16, jnp.bfloat16), jnp.float32)
        ]
    q = jax.random.normal(jax.random.key(2), (2, 7, 2, 8))
    want = attention.einsum_attention(q, q, q)
    q16 = q.astype(jnp.bfloat16)
    got = attention.einsum_attention(q16, q16, q16)
    assert got.dtype == jnp.bfloat16
    found = _dot_eqns(attention.einsum_attention, q16, q16, q16)
    assert len(found) == 2 and all(e[1] == jnp.float32 for e in found)
    grad = jax.grad(lambda q: jnp.sum(attention.einsum_attention(q, q, q).astype(jnp.float32)))
    found = _dot_eqns(grad, q16)
    assert len(found) == 6  # two products and their four transposes
    assert all(ops == (jnp.bfloat16, jnp.bfloat16) and out == jnp.float32 for ops, out in found)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_the_gradient_products_are_bfloat16_operands_too_and_equal_the_float32_ones():
    """Dense ([B, L, K] x [K, N]), DenseGeneral (two contracted axes) and a batched product:
    forward and both gradient products take bfloat16 operands and a float32 result, and the
    gradients are jax's own for the same rounded product."""
    keys = iter(jax.random.split(jax.random.key(3), 6))
    cases = [
        ((2, 5, 8), (8, 16), (((2,), (0,)), ((), ()))),
        ((2, 5, 4, 2), (4, 2, 6), (((2, 3), (0, 1)), ((), ()))),
        ((3, 5, 8), (3, 8, 4), (((2,), (1,)), ((0,), (0,)))),
    ]
    for lhs_shape, rhs_shape, dims in cases:
        lhs = jax.random.normal(next(keys), lhs_shape).astype(jnp.bfloat16)
        rhs = jax.random.normal(next(keys), rhs_shape).astype(jnp.bfloat16)

        def loss(a, b, dot, dims=dims):
            return jnp.sum(jnp.sin(dot(a, b, dims).astype(jnp.float32)))

        ours = lambda a, b: jax.grad(loss, (0, 1))(a, b, products.float32_accumulating_dot)
        got = ours(lhs, rhs)
        found = _dot_eqns(ours, lhs, rhs)
        assert len(found) == 3, found  # the forward and its two transposes
        for operands, result in found:
            assert operands == (jnp.bfloat16, jnp.bfloat16) and result == jnp.float32

        # jax's own gradient of the same rounded product: its float32 cotangent holds bfloat16
        # values, so only the summation order may differ.
        def rounded(a, b, d):
            return jax.lax.dot_general(a, b, d, preferred_element_type=jnp.float32).astype(a.dtype)

        want = jax.grad(loss, (0, 1))(lhs, rhs, rounded)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == jnp.bfloat16 and g.shape == w.shape
            np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), rtol=2**-7)
