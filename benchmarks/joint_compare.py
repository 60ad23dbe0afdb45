"""The joint model against the single-task models: per task and split, the task's headline
metrics of a trained joint workdir (configs/shapes_joint.py) beside those of single-task workdirs,
the examples each side trained each task on, and the generator parameters of each side.

  python benchmarks/joint_compare.py --joint=runs/shapes_joint \
      [--singles=runs/shapes_t2i,runs/shapes_i2t,runs/shapes_s2t,runs/shapes_v2t]

Parameters are counted from the configs (abstract init, nothing trained is needed): the joint
generator as the joint run builds it, and each single-task generator as its own config (the
joint config's `tasks.<task>`) builds it. A single-task workdir is matched to its task by its
config.json; without one, its columns are empty. Last line: one JSON object
{"joint_params", "single_params": {task: n}, "rows": [{"task", "split", "metric", "joint",
"single", "joint_examples", "single_examples"}]}.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags

from crossmodal_jax import joint_run
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.models.joint_dit import merge_view_variables
from crossmodal_jax.stages import builders, joint

_JOINT = flags.DEFINE_string("joint", "runs/shapes_joint", "A trained joint workdir.")
_SINGLES = flags.DEFINE_list("singles", [], "Single-task workdirs of the joint run's tasks.")

# Per task: the metrics of metrics.json compared (each on every split).
HEADLINES = {
    "text2image": ("sample_attribute_accuracy/all", "classifier_fd"),
    "image2text": ("exact_match", "wer"),
    "speech2text": ("wer", "exact_match"),
    "video2text": ("exact_match", "wer"),
}


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def generator_params(exp) -> int:
    model = builders.build_generator_model(exp)
    inputs = builders.example_inputs(exp, model)
    return count(jax.eval_shape(lambda k: model.init(k, *inputs), jax.random.key(0)))


def parameter_counts(config, workdir: str) -> tuple[int, dict[str, int]]:
    exps = joint_run.local_task_experiments(config, workdir)
    singles = {name: generator_params(local_experiment(config.tasks[name])) for name in exps}
    joint.attach_joint_model(exps, config.generator.model)

    def init(key):
        return merge_view_variables(
            {
                name: exp.generator_model.init(key, *builders.example_inputs(exp))
                for name, exp in exps.items()
            }
        )

    return count(jax.eval_shape(init, jax.random.key(0))), singles


def examples(config) -> int:
    return int(config.generator.train.steps) * int(config.generator.train.batch_size)


def compare(joint_dir: str, single_dirs: list[str]) -> dict:
    config = load_resolved_config(joint_dir)
    joint_metrics = json.load(open(os.path.join(joint_dir, "metrics.json")))
    singles = {}
    for d in single_dirs:
        c = load_resolved_config(d)
        singles[c.task] = (c, json.load(open(os.path.join(d, "metrics.json"))))
    joint_params, single_params = parameter_counts(config, joint_dir)
    rows = []
    for name in sorted(config.tasks):
        task_cfg = joint_run.task_config(config, name)
        single_cfg, single_metrics = singles.get(name, (config.tasks[name], {}))
        for split in ("test", "novel"):
            for metric in HEADLINES[name]:
                key = f"{split}_{metric}"
                rows.append(
                    {
                        "task": name,
                        "split": split,
                        "metric": metric,
                        "joint": joint_metrics.get(f"{name}/{key}"),
                        "single": single_metrics.get(key),
                        "joint_examples": examples(task_cfg),
                        "single_examples": examples(single_cfg),
                    }
                )
    return {"joint_params": joint_params, "single_params": single_params, "rows": rows}


def main(argv):
    del argv
    result = compare(_JOINT.value, _SINGLES.value)

    def shown(v):
        return "—" if v is None else f"{v:.4g}"

    print("| task | split | metric | joint | single | examples (joint / single) |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['task']} | {r['split']} | {r['metric']} | {shown(r['joint'])} | "
            f"{shown(r['single'])} | {r['joint_examples']:,} / {r['single_examples']:,} |"
        )
    total = sum(result["single_params"].values())
    print(
        f"generator parameters: joint {result['joint_params']:,}; single-task {total:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(result['single_params'].items()))})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
