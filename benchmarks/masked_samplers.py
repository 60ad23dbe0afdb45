"""Caption quality against decoding steps of a trained X→text workdir, per masked sampler: MaskGIT,
confidence-threshold parallel decoding, ReMDM remasking and semi-autoregressive blocks.

  python benchmarks/masked_samplers.py --workdir=runs/img2txt [--samplers=maskgit,threshold,remdm]
      [--steps=2,4,8] [--threshold=0.8,0.9,0.95] [--remask_cap=0.1] [--block_size=4]
      [--num_examples=0] [--splits=test,novel]

Scores the test split (and any other of `--splits`) exactly like metrics.json
(evaluate.caption_test_split) with the workdir's other sample settings. NFE is the model calls per
caption: `steps` for maskgit and remdm, blocks x max(1, steps // blocks) for semi_ar, and for
threshold (whose `steps` is only the most it may take) the mean of the calls each test caption
needed, measured by a second pass over the test split (the same captions when the temperature is
0). Last line: one JSON object {"workdir", "caption_tokens", "rows": [{"sampler", "steps",
"option", "nfe", <metrics of each split>, "seconds"}]}.
"""

from __future__ import annotations

import json
import math
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from crossmodal_jax.config import blocks
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.data import text as text_tok
from crossmodal_jax.diffusion import masked_decoding
from crossmodal_jax.evaluation import evaluate
from crossmodal_jax.experiment import Experiment, local_experiment
from crossmodal_jax.stages import builders
from crossmodal_jax.stages.generators import generator_stage, sampler
from crossmodal_jax.stages.samplers import masked_logits_fn
from crossmodal_jax.training.stage import restore_stage_state

_WORKDIR = flags.DEFINE_string("workdir", "runs/img2txt", "A trained X→text workdir.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", ["maskgit", "threshold", "remdm"], f"Of {sorted(masked_decoding.MASKED_SAMPLERS)}."
)
_STEPS = flags.DEFINE_list("steps", ["2", "4", "8"], "Step counts (threshold: the most it takes).")
_THRESHOLD = flags.DEFINE_list("threshold", ["0.8", "0.9", "0.95"], "threshold: confidences.")
_REMASK_CAP = flags.DEFINE_list("remask_cap", ["0.1"], "remdm: eta_cap values.")
_BLOCK_SIZE = flags.DEFINE_list("block_size", ["4"], "semi_ar: block sizes.")
_NUM = flags.DEFINE_integer("num_examples", 0, "Examples a split (0 = the whole split).")
_SPLITS = flags.DEFINE_list(
    "splits", ["test"], "Splits scored, e.g. test,novel (the shapes world)."
)

# The option each sampler sweeps besides the steps: (config key, flag).
_OPTIONS = {"threshold": ("threshold", _THRESHOLD), "remdm": ("remask_cap", _REMASK_CAP)}
_OPTIONS["semi_ar"] = ("block_size", _BLOCK_SIZE)


def threshold_nfe(exp: Experiment, state) -> float:
    """Mean model calls per caption of the threshold sampler with the config's sample settings."""
    cfg, length = exp.config.generator.sample, exp.config.data.text_max_len
    dit, condition = builders.build_token_dit(exp), builders.source_condition(exp)

    @jax.jit
    def calls(params, model_state, source, key):
        cond, cond_mask = condition(model_state, {exp.task.source: source})
        _, steps_B = masked_decoding.threshold_sample(
            masked_logits_fn(dit, params, cond, cond_mask, cfg.guidance),
            key,
            batch_size=source.shape[0],
            length=length,
            mask_id=text_tok.MASK_ID,
            num_steps=cfg.steps,
            threshold=cfg.threshold,
            temperature=cfg.temperature,
            schedule=cfg.schedule,
            forbidden_ids=exp.text.unused_ids,
            return_steps=True,
        )
        return steps_B

    counts, key = [], jax.random.key(0)
    batches = exp.batches("test", exp.config.eval.batch_size, limit=exp.config.eval.num_examples)
    for i, batch in enumerate(batches):
        source = batch[exp.task.source]
        out = calls(state.ema_params, state.model_state, source, jax.random.fold_in(key, i))
        counts.append(np.asarray(out)[: len(batch["text"])])
    return float(np.mean(np.concatenate(counts)))


def nfe(exp: Experiment, state, name: str) -> float:
    cfg, length = exp.config.generator.sample, exp.config.data.text_max_len
    if name == "threshold":
        return threshold_nfe(exp, state)
    if name == "semi_ar":
        num_blocks = math.ceil(length / cfg.block_size)
        return float(num_blocks * max(1, cfg.steps // num_blocks))
    return float(cfg.steps)


def main(argv) -> None:
    del argv
    config = load_resolved_config(_WORKDIR.value)
    config.eval.num_examples = _NUM.value
    sample_cfg = config.generator.sample
    for key, value in blocks.sample("masked").items():  # workdirs trained before these keys
        if key not in sample_cfg:
            sample_cfg[key] = value
    exp = local_experiment(config, _WORKDIR.value)
    rows = []
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        state = restore_stage_state(generator_stage(exp), exp.ctx)
        for name in _SAMPLERS.value:
            key, flag = _OPTIONS.get(name, (None, None))
            options = [None] if key is None else [type(sample_cfg[key])(v) for v in flag.value]
            for steps in map(int, _STEPS.value):
                for option in options:
                    sample_cfg.update(sampler=name, steps=steps, **({key: option} if key else {}))
                    sampler(exp, rebuild=True)  # built (and jitted) per setting
                    t0 = time.perf_counter()
                    metrics = {}
                    for split in _SPLITS.value:
                        metrics.update(evaluate.caption_test_split(exp, state, split)[0])
                    seconds = time.perf_counter() - t0  # compile included
                    row = {
                        "sampler": name,
                        "steps": steps,
                        "option": {key: option} if key else {},
                        "nfe": round(nfe(exp, state, name), 3),
                        **{k: round(v, 4) for k, v in metrics.items()},
                        "seconds": round(seconds, 2),
                    }
                    print(row)
                    rows.append(row)
    tokens = config.data.text_max_len
    print(json.dumps({"workdir": _WORKDIR.value, "caption_tokens": tokens, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
