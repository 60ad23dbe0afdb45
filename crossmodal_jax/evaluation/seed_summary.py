"""Metrics over seeds: one config trained with several seeds, summarised per metric as mean ± std,
min and max, so that recipes are ranked by what they do and not by the luck of one seed.

The std is the sample standard deviation (ddof=1; 0 for a single seed): the spread a reader
should expect of another seed, not of these ones.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

# The metrics a table shows by default (fnmatch patterns over metrics.json's keys, which name the
# split: `novel_exact_match`, `image2text/test_wer`); seeds.json holds every numeric metric.
HEADLINE = (
    "*exact_match",
    "*_wer",
    "*attribute_accuracy/all",
    "*_psnr_db",
    "*digit_accuracy",
    "*classifier_fd",
    "*fid",
)


def seeded(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of `config` trained with `seed`: its init, data order and diffusion noise, and, in a
    joint config, every task's (its tokenizer's) as well. `{seed}` in a string value becomes the
    seed, so each seed can read its own part of an earlier seeds run, e.g.
    `--config.tokenizer_from=runs/i2t_seeds/seed_{seed}`."""

    def fill(tree: dict) -> dict:
        return {
            k: fill(v)
            if isinstance(v, dict)
            else v.replace("{seed}", str(seed))
            if isinstance(v, str)
            else v
            for k, v in tree.items()
        }

    out = ml_collections.ConfigDict(fill(config.to_dict()))
    out.seed = seed
    for name in out.get("tasks", {}):
        out.tasks[name].seed = seed
    return out


def parse_seeds(text: str) -> list[int]:
    """`3` → seeds 0, 1, 2; `0,4,7` → those seeds. A ValueError names what is wrong."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"--seeds={text!r}: a count (3) or a comma list of integers (0,4,7)")
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds={text!r}: a count of at least 1")
        return list(range(values[0]))
    if len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"--seeds={text!r}: distinct integers >= 0")
    return values


def summarize(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict]:
    """Per metric present in every seed's metrics: mean, std (ddof=1), min, max and the values in
    seed order. A metric that is not a finite number in every seed is left out."""
    seeds = sorted(per_seed)
    keys = set.intersection(*(set(per_seed[s]) for s in seeds)) if seeds else set()
    out = {}
    for key in sorted(keys):
        values = [per_seed[s][key] for s in seeds]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        if not all(math.isfinite(v) for v in values):
            continue
        x = np.asarray(values, np.float64)
        out[key] = dict(
            mean=float(x.mean()),
            std=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            min=float(x.min()),
            max=float(x.max()),
            values=[float(v) for v in x],
        )
    return out


def select(summary: Mapping[str, dict], patterns: Sequence[str]) -> list[str]:
    """The summary's keys matching any of `patterns`, in key order (so grouped by split)."""
    return [k for k in sorted(summary) if any(fnmatch.fnmatch(k, p) for p in patterns)]


def _number(v: float) -> str:
    return f"{v:.4g}"  # metrics.json's units: fractions stay fractions (0.9125, not 91.25 %)


def table(summary: Mapping[str, dict], seeds: Sequence[int], patterns: Sequence[str]) -> str:
    """A markdown table of the selected metrics: mean ± std, min, max, then one column a seed."""
    keys = select(summary, patterns)
    head = ["metric", "mean ± std", "min", "max", *(f"seed {s}" for s in seeds)]
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for k in keys:
        m = summary[k]
        cells = [
            k,
            f"{_number(m['mean'])} ± {_number(m['std'])}",
            _number(m["min"]),
            _number(m["max"]),
            *(_number(v) for v in m["values"]),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
