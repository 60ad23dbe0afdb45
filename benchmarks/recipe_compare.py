"""The 2026 recipe side by side on trained text→image workdirs: sample quality against the number
of model calls (NFE) for each sampler of each workdir's process (Gaussian: DDIM, DPM-Solver++(2M);
flow: Euler, Heun; masked over VQ ids: MaskGIT), and, across workdirs that differ only in
`generator.model.conditioning`, the conditioning variants at their parameter counts.

  python benchmarks/recipe_compare.py --workdirs=runs/vqdit_img,runs/vqdit_img_flow \
      [--nfe=4,8,16,32,50] [--samplers=ddim,dpmpp_2m,euler,heun,maskgit] [--guidance=4] \
      [--guidance_interval=0:1,0:0.7] [--set=eta=1.0] [--per_digit=20] [--num_examples=0]

NFE counts the DiT's calls per sample: classifier-free guidance runs both branches in one batched
call, so it is the sampler's steps times its calls per step (Heun 2, every other 1); an NFE a
sampler cannot hit exactly is rounded down to a whole number of its steps and reported as run.
`--guidance` and `--guidance_interval` (lo:hi, as `generator.sample.guidance_interval`) default
to the workdir's own settings, and `--set=key=value` changes any other `generator.sample` setting
(e.g. DDIM's `eta`, the flow grid's `shift`) for every row. Each row holds what metrics.json
reports (benchmarks/image_rows.py): on the digits, the SVC's digit accuracy on `per_digit` samples
of each "the digit <word>" prompt and the classifier Fréchet distance and class accuracy of the
test-caption images; on the shapes world, the detector's test and novel accuracies and distances.
X→text decoding steps are compared by benchmarks/masked_samplers.py. Last line: one JSON object
{"per_digit", "reference", "rows": [{"workdir", "process", "conditioning", "params", "sampler",
"steps", "nfe", "guidance", "guidance_interval", "set", <figures>, "seconds"}]}.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
from absl import app, flags
from image_rows import quality_row, reference_distances

from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.diffusion import flow_samplers
from crossmodal_jax.evaluation import shapes_judge
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.stages.generators import PROCESSES, generator_stage
from crossmodal_jax.training.stage import restore_stage_state

_WORKDIRS = flags.DEFINE_list("workdirs", ["runs/vqdit_img"], "Trained text→image workdirs.")
_NFE = flags.DEFINE_list("nfe", ["4", "8", "16", "32", "50"], "Model calls per sample.")
_SAMPLERS = flags.DEFINE_list(
    "samplers",
    ["ddim", "dpmpp_2m", "euler", "heun", "maskgit"],
    "Samplers to compare; each workdir runs those of its process.",
)
_GUIDANCE = flags.DEFINE_list("guidance", [], "Guidance scales ([] = each workdir's).")
_INTERVAL = flags.DEFINE_list(
    "guidance_interval", [], "Guidance intervals lo:hi ([] = each workdir's)."
)
_SET = flags.DEFINE_multi_string(
    "set", [], "key=value: another generator.sample setting for every row, e.g. eta=1.0."
)
_PER_DIGIT = flags.DEFINE_integer("per_digit", 20, "Digits: samples per digit prompt.")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 0, "Captions per split for the distribution metrics (0 = the config's)."
)


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps of `sampler` whose model calls fit in `nfe` (0 when not one fits)."""
    return nfe // flow_samplers.CALLS_PER_STEP.get(sampler, 1)


def _interval(text: str) -> tuple[float, float]:
    lo, hi = text.split(":")
    return float(lo), float(hi)


def compare_workdir(workdir: str, rows: list[dict], reference: dict) -> None:
    """Appends the rows of one workdir: every sampler of its process × NFE × guidance setting."""
    config = load_resolved_config(workdir)
    if _NUM_EXAMPLES.value:
        config.eval.num_examples = _NUM_EXAMPLES.value
    sample_cfg = config.generator.sample
    for setting in _SET.value:
        key, value = setting.split("=", 1)
        sample_cfg[key] = type(sample_cfg[key])(value)
    process = config.generator.diffusion.process
    samplers = [s for s in _SAMPLERS.value if s in PROCESSES[process]["sample.sampler"][1]]
    scales = [float(g) for g in _GUIDANCE.value] or [sample_cfg.guidance]
    intervals = [_interval(i) for i in _INTERVAL.value] or [tuple(sample_cfg.guidance_interval)]
    exp = local_experiment(config, workdir)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        state = restore_stage_state(generator_stage(exp), exp.ctx)
        params = sum(x.size for x in jax.tree.leaves(state.params))
        if not reference and config.data.name not in shapes_judge.DATASETS:
            reference.update(reference_distances(exp))
            print(reference, flush=True)
        for name in samplers:
            for nfe in map(int, _NFE.value):
                steps = steps_for(name, nfe)
                if steps < 1:
                    continue
                for scale in scales:
                    for interval in intervals:
                        sample_cfg.update(
                            sampler=name, steps=steps, guidance=scale, guidance_interval=interval
                        )
                        row = {
                            "workdir": workdir,
                            "process": process,
                            "conditioning": config.generator.model.conditioning,
                            "params": params,
                            "sampler": name,
                            "steps": steps,
                            "nfe": steps * flow_samplers.CALLS_PER_STEP.get(name, 1),
                            "guidance": scale,
                            "guidance_interval": list(interval),
                            "set": _SET.value,
                            **quality_row(exp, state, _PER_DIGIT.value),
                        }
                        print(row, flush=True)
                        rows.append(row)


def main(argv) -> None:
    del argv
    rows: list[dict] = []
    reference: dict = {}
    for workdir in _WORKDIRS.value:
        compare_workdir(workdir, rows, reference)
    print(json.dumps({"per_digit": _PER_DIGIT.value, "reference": reference, "rows": rows}))


if __name__ == "__main__":
    app.run(main)
