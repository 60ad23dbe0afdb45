"""The tokenizer on the test split: reconstruction PSNR and MSE, and codebook health."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from crossmodal_jax.data.padded_audio import mask_key
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.models.vq import codebook_perplexity, codebook_usage, dead_code_count
from crossmodal_jax.stages import source_mask
from crossmodal_jax.stages.objectives import psnr


def ema_dead_codes(tok_vars: dict, threshold: float) -> float:
    """Dead codes of every EMA codebook in the tokenizer (each residual stage's; 0 for FSQ and
    LFQ, which have no codebook to die)."""
    sizes = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tok_vars.get("vq_stats", {}))
        if getattr(path[-1], "key", None) == "cluster_size"
    ]
    return float(sum(float(dead_code_count(s, threshold)) for s in sizes))


def reconstruction_metrics(
    exp: Experiment, tok_vars: dict, split: str = "test"
) -> dict[str, float]:
    """Per-input PSNR (mean), MSE, and codebook usage/perplexity over the whole split's codes
    (or over its first eval.num_examples), keyed `<split>_...`; and the codebook's dead codes."""
    tokenizer = exp.tokenizer

    @partial(jax.jit, out_shardings=P())  # replicated: readable on every process
    def run(x, frames):
        z_q, idx = tokenizer.apply(tok_vars, x, method="tokenize")
        rec = tokenizer.apply(tok_vars, z_q, method="decode")
        if frames is not None:  # a padded source: the error of the frames that hold sound
            return source_mask.masked_mean_squares(x, rec, frames), idx
        mse = jnp.mean(jnp.square(rec - x).reshape(x.shape[0], -1), axis=-1)
        return mse, idx

    mses, indices = [], []
    cfg = exp.config.eval
    key = exp.modality.name
    for batch in exp.batches(split, cfg.batch_size, limit=cfg.num_examples):
        frames = batch.get(mask_key(key))
        mse, idx = run(source_mask.host_canonical(batch[key], frames), frames)
        mses.append(np.asarray(mse))
        indices.append(np.asarray(idx).reshape(-1))
    mse = np.concatenate(mses)
    idx = jnp.asarray(np.concatenate(indices))
    k = tokenizer.vocab_size  # residual stages: the codes of all stages together
    quality = {
        f"{split}_psnr_db": float(np.mean(psnr(mse))),
        f"{split}_recon_mse": float(np.mean(mse)),
    }
    if k == 0:  # a pretrained VAE: continuous latents, no codebook to measure
        return quality
    return {
        **quality,
        f"{split}_codebook_usage": float(codebook_usage(idx, k)),
        f"{split}_codebook_perplexity": float(codebook_perplexity(idx, k)),
        # Codes the EMA considers dead (restart candidates) and codes no test latent uses.
        "dead_codes": ema_dead_codes(tok_vars, tokenizer.dead_code_threshold),
        f"{split}_unused_codes": float(
            k - np.count_nonzero(np.bincount(np.asarray(idx), minlength=k))
        ),
    }
