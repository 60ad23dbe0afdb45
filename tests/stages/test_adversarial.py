"""VQGAN's adversarial tokenizer training: hinge losses, the adaptive weight against the full model's
last-layer gradients, each player's gradient, and the start step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crossmodal_jax.models.discriminator import PatchDiscriminator
from crossmodal_jax.models.vqvae import VQVAE
from crossmodal_jax.stages.adversarial import (
    ADVERSARIAL,
    DISCRIMINATOR,
    adversarial_vqvae_objective,
    hinge_d_loss,
    hinge_g_loss,
    init_adversarial,
)
from crossmodal_jax.stages.objectives import reconstruction_mse, vqvae_objective

WEIGHT = 0.7


def test_hinge_losses_closed_form():
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-3.0, 0.0, 1.5])
    # relu(1 - real) = (0, 0.5, 2); relu(1 + fake) = (0, 1, 2.5)
    np.testing.assert_allclose(float(hinge_d_loss(real, fake)), 0.5 * (2.5 / 3 + 3.5 / 3))
    np.testing.assert_allclose(float(hinge_g_loss(fake)), -(-1.5 / 3))


@pytest.fixture(scope="module")
def setup():
    model = VQVAE(channels=4, channel_mult=(1, 2), code_dim=4, num_codes=8)
    disc = PatchDiscriminator(channels=8, num_layers=2)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1), minval=-1, maxval=1)
    v = nn.meta.unbox(model.init(jax.random.key(1), x[:1], train=False))
    extra = nn.meta.unbox(init_adversarial(disc, jax.random.key(2), x[:1]))
    params = {**v["params"], **extra["params"]}
    state = {"vq_stats": v["vq_stats"], ADVERSARIAL: extra[ADVERSARIAL]}
    return model, disc, x, params, state


def _grads(objective, params, state, x):
    fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
    (loss, (new_state, metrics)), grads = fn(params, state, {"image": x}, jax.random.key(3))
    return loss, new_state, metrics, grads


def test_each_player_gets_its_own_gradient_and_the_adaptive_weight_is_vqgans(setup):
    model, disc, x, params, state = setup
    objective = adversarial_vqvae_objective(
        model, disc, data_key="image", weight=WEIGHT, start_step=0
    )
    loss, new_state, metrics, grads = _grads(objective, params, state, x)
    assert int(new_state[ADVERSARIAL]["step"]) == 1 and float(metrics["adversarial_on"]) == 1.0
    vq_params = {k: v for k, v in params.items() if k != DISCRIMINATOR}
    variables = {"params": vq_params, "vq_stats": state["vq_stats"]}
    rngs = {"vq": jax.random.key(3)}

    def reconstruct(p):
        out, _ = model.apply(
            {**variables, "params": p}, x, train=True, rngs=rngs, mutable=["vq_stats"]
        )
        return out[0]

    x_rec = jax.jit(reconstruct)(vq_params)

    # The discriminator's gradient is the hinge loss's on real inputs and frozen reconstructions.
    def d_loss(d):
        return hinge_d_loss(disc.apply({"params": d}, x), disc.apply({"params": d}, x_rec))

    want_d = jax.jit(jax.grad(d_loss))(params[DISCRIMINATOR])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
        grads[DISCRIMINATOR],
        want_d,
    )

    # λ: the ratio of the full model's gradient norms at the decoder's last layer (VQGAN computes
    # it with autograd through the whole decoder; ours recomputes that layer from its input).
    def last_layer_norm(loss_of_output):
        g = jax.jit(jax.grad(lambda p: loss_of_output(reconstruct(p))))(vq_params)
        return optax.tree.norm(g["decoder"]["conv_out"])

    d = params[DISCRIMINATOR]
    rec_norm = last_layer_norm(lambda r: jnp.mean(reconstruction_mse(x, r)))
    gan_norm = last_layer_norm(lambda r: hinge_g_loss(disc.apply({"params": d}, r)))
    np.testing.assert_allclose(
        float(metrics["adaptive_weight"]), rec_norm / (gan_norm + 1e-4), rtol=1e-4
    )

    # The tokenizer's gradient: reconstruction + commitment + weight * λ * generator loss, with
    # λ and the discriminator held constant.
    lam = metrics["adaptive_weight"]

    def g_total(p):
        (out, aux), _ = model.apply(
            {**variables, "params": p}, x, train=True, rngs=rngs, mutable=["vq_stats"]
        )
        gan = hinge_g_loss(disc.apply({"params": d}, out))
        return jnp.mean(reconstruction_mse(x, out)) + aux["loss"] + WEIGHT * lam * gan

    want_g = jax.jit(jax.grad(g_total))(vq_params)
    got_g = {k: v for k, v in grads.items() if k != DISCRIMINATOR}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_g, want_g)


def test_before_the_start_step_it_is_the_plain_tokenizer_objective(setup):
    model, disc, x, params, state = setup
    objective = adversarial_vqvae_objective(
        model, disc, data_key="image", weight=WEIGHT, start_step=5
    )
    loss, new_state, metrics, grads = _grads(objective, params, state, x)
    assert float(metrics["adversarial_on"]) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[DISCRIMINATOR]))
    vq_params = {k: v for k, v in params.items() if k != DISCRIMINATOR}
    plain_loss, plain_state, _, plain_grads = _grads(
        vqvae_objective(model), vq_params, {"vq_stats": state["vq_stats"]}, x
    )
    np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-6)
    got = {k: v for k, v in grads.items() if k != DISCRIMINATOR}
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, plain_grads
    )
