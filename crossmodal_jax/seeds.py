"""Train one config with several seeds, one after another, and summarise every metric over them.

  python -m crossmodal_jax.seeds --config=configs/shapes_i2t.py --workdir=runs/shapes_i2t_seeds \
      --seeds=3 [--config.generator.train.steps=4000 ...]

`--seeds=3` is seeds 0, 1, 2; `--seeds=0,4,7` names them. Seed s trains in `<workdir>/seed_<s>`, an
ordinary workdir (sample, serve and evaluate read it), with `config.seed = s` (init, data order,
diffusion noise; in a joint config every task's seed too); every `--config.*` override applies to
all seeds. Rerunning the command reads each finished seed (its config.json equal to this one and a
metrics.json) instead of training it again, resumes an unfinished one, and refuses one trained with
a different config in one line, as main does.

Writes `<workdir>/seeds.json` ({"seeds", "metrics": {key: {mean, std, min, max, values}}}) and
prints a table of the headline metrics (`--metrics`, fnmatch patterns); the last line printed is
one JSON object of the table's means, stds and minima.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import app, flags

from crossmodal_jax import main as single
from crossmodal_jax.errors import fail
from crossmodal_jax.evaluation import seed_summary

_SEEDS = flags.DEFINE_string("seeds", "3", "A count (3 = seeds 0, 1, 2) or a list (0,4,7).")
_METRICS = flags.DEFINE_list(
    "metrics",
    list(seed_summary.HEADLINE),
    "fnmatch patterns of the metrics the table shows (seeds.json holds every metric).",
)


def seed_dir(workdir: str, seed: int) -> str:
    """Where seed `seed` of a seeds run trains: an ordinary workdir."""
    return os.path.join(workdir, f"seed_{seed}")


def finished_metrics(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """A seed workdir's metrics when it finished with exactly this config, else None (to train)."""
    config_path, metrics_path = (os.path.join(workdir, n) for n in ("config.json", "metrics.json"))
    if not (os.path.isfile(config_path) and os.path.isfile(metrics_path)):
        return None
    from crossmodal_jax.config.workdir import with_new_keys

    with open(config_path) as f:
        old = with_new_keys(json.load(f))
    if old != json.loads(config.to_json_best_effort()):
        return None  # a longer or re-evaluated run: main resumes it (or refuses, naming the key)
    with open(metrics_path) as f:
        return json.load(f)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config, workdir = single._CONFIG.value, single._WORKDIR.value
    if config is None or not workdir:
        fail("both --config=configs/<task>.py and --workdir=DIR are required")
    try:
        seeds = seed_summary.parse_seeds(_SEEDS.value)
    except ValueError as e:
        fail(str(e))
    single.start(config)
    import jax

    per_seed = {}
    for i, seed in enumerate(seeds):
        c, out = seed_summary.seeded(config, seed), seed_dir(workdir, seed)
        metrics = finished_metrics(c, out)
        state = "finished: read" if metrics is not None else "training"
        print(f"seed {seed} ({i + 1}/{len(seeds)}) in {out}: {state}", file=sys.stderr, flush=True)
        per_seed[seed] = metrics if metrics is not None else single.train(c, out)
    if jax.process_index() != 0:
        return
    summary = seed_summary.summarize(per_seed)
    from crossmodal_jax.logs.writers import write_json

    write_json(os.path.join(workdir, "seeds.json"), dict(seeds=seeds, metrics=summary), indent=2)
    print(seed_summary.table(summary, seeds, _METRICS.value))
    shown = seed_summary.select(summary, _METRICS.value)
    line = {k: {s: summary[k][s] for s in ("mean", "std", "min")} for k in shown}
    print(json.dumps(dict(seeds=seeds, **line), sort_keys=True))


def run_main() -> None:
    app.run(main, flags_parser=single.parse_flags)


if __name__ == "__main__":
    run_main()
