"""Adversarial tokenizer training (VQGAN, Esser et al. 2021): a PatchGAN discriminator, hinge
losses and VQGAN's adaptive weight, switched on at `tokenizer.adversarial.start_step`.

The discriminator's parameters live in the tokenizer stage's params under DISCRIMINATOR, so the
same optimizer updates them and they are checkpointed, restored and sharded with the rest; a step
counter lives in model_state[ADVERSARIAL]. One objective gives both players their gradients: the
tokenizer's terms see the discriminator through stop_gradient, the discriminator's terms see
stop_gradient(reconstructions). The two parameter sets are disjoint, so the sum's gradient is
each player's own gradient, and the shared `train_step` updates both in one step (VQGAN takes
the two steps on the same batch too).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from crossmodal_jax.models.discriminator import PatchDiscriminator
from crossmodal_jax.models.vqvae import VQVAE, output_conv
from crossmodal_jax.stages.objectives import (
    PERCEPTUAL,
    perceptual_term,
    reconstruction_mse,
    reconstruction_terms,
)
from crossmodal_jax.training.step import Objective

DISCRIMINATOR = "discriminator"  # params key of the discriminator
ADVERSARIAL = "adversarial"  # model_state collection of the step counter


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """The discriminator's hinge loss: real patches above +1, reconstructed ones below -1."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
    """The tokenizer's adversarial loss: raise the discriminator's logits of its reconstructions."""
    return -jnp.mean(logits_fake)


def adaptive_weight(
    rec_grads: Any, gan_grads: Any, *, eps: float = 1e-4, max_weight: float = 1e4
) -> jax.Array:
    """VQGAN's λ = ||∇_last L_rec|| / (||∇_last L_gan|| + eps), clipped to [0, max_weight] and held
    constant: the adversarial gradient at the decoder's last layer is scaled to the size of the
    reconstruction gradient there, whatever the two losses' scales."""
    ratio = optax.tree.norm(rec_grads) / (optax.tree.norm(gan_grads) + eps)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


def split_variables(params: dict, model_state: dict) -> tuple[dict, dict, dict]:
    """(the VQ-VAE's variables, the discriminator's params, the counter collection); the frozen
    perceptual network, if any, is in none of them."""
    vq_params = {k: v for k, v in params.items() if k != DISCRIMINATOR}
    state = {k: v for k, v in model_state.items() if k not in (ADVERSARIAL, PERCEPTUAL)}
    return {"params": vq_params, **state}, params.get(DISCRIMINATOR), model_state.get(ADVERSARIAL)


def init_adversarial(disc: PatchDiscriminator, key: jax.Array, dummy: jax.Array) -> dict:
    """What the tokenizer stage adds to its variables: the discriminator's params and a counter."""
    return {
        "params": {DISCRIMINATOR: disc.init(key, dummy)["params"]},
        ADVERSARIAL: {"step": jnp.zeros((), jnp.int32)},
    }


def adversarial_vqvae_objective(
    model: VQVAE,
    disc: PatchDiscriminator,
    *,
    data_key: str,
    weight: float,
    start_step: int,
    perceptual_weight: float = 0.0,
) -> Objective:
    """Reconstruction MSE (+ perceptual_weight * LPIPS) + the quantizer's loss + from
    `start_step` on, weight * λ * hinge generator loss + the discriminator's hinge loss (λ:
    `adaptive_weight` at the decoder's last layer, recomputed from its sown input, with VQGAN's
    reconstruction loss, the perceptual term included, as its numerator)."""
    last_conv = output_conv(model.in_channels, model.spatial_dims, model.dtype)

    def loss_fn(params, model_state, batch, key):
        x = batch[data_key]
        variables, d_params, counter = split_variables(params, model_state)
        (x_rec, aux), new_vars = model.apply(
            variables, x, train=True, rngs={"vq": key}, mutable=["vq_stats", "intermediates"]
        )
        features = new_vars.pop("intermediates")["decoder"]["last_features"][0]
        recon, metrics = reconstruction_terms(x, x_rec, aux)
        recon = recon + perceptual_term(model_state, x, x_rec, perceptual_weight, metrics)

        def recon_loss(x_hat):
            return jnp.mean(reconstruction_mse(x, x_hat)) + perceptual_term(
                model_state, x, x_hat, perceptual_weight, {}
            )

        frozen_d = jax.lax.stop_gradient(d_params)

        def gan_loss(x_hat):
            return hinge_g_loss(disc.apply({"params": frozen_d}, x_hat))

        def from_last_layer(loss):  # the loss as a function of the last layer's params
            feats = jax.lax.stop_gradient(features)
            return lambda p: loss(last_conv.apply({"params": p}, feats).astype(jnp.float32))

        last = jax.lax.stop_gradient(variables["params"]["decoder"]["conv_out"])
        lam = adaptive_weight(
            jax.grad(from_last_layer(recon_loss))(last),
            jax.grad(from_last_layer(gan_loss))(last),
        )
        g_loss = gan_loss(x_rec)
        logits_real = disc.apply({"params": d_params}, x)
        logits_fake = disc.apply({"params": d_params}, jax.lax.stop_gradient(x_rec))
        d_loss = hinge_d_loss(logits_real, logits_fake)

        on = (counter["step"] >= start_step).astype(jnp.float32)
        loss = recon + aux["loss"] + on * (weight * lam * g_loss + d_loss)
        metrics.update(
            gan_loss=g_loss,
            disc_loss=d_loss,
            adaptive_weight=lam,
            adversarial_on=on,
            logits_real=jnp.mean(logits_real),
            logits_fake=jnp.mean(logits_fake),
        )
        new_state = {**model_state, **new_vars, ADVERSARIAL: {"step": counter["step"] + 1}}
        return loss, (new_state, metrics)

    return loss_fn
