"""The end-of-run report: `<workdir>/report.md`, a page a person reads first.

It lists the final metrics, links the image grids the run wrote (relative paths, so the workdir can
be moved or shared), and names where the curves and checkpoints are.
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections


def _images(workdir: str) -> list[str]:
    paths = [os.path.join(workdir, "samples.png")]
    for stage in ("tokenizer", "generator"):
        found = sorted(glob.glob(os.path.join(workdir, stage, "*.png")))
        paths += found[-1:]  # the newest grid of each stage
    return [os.path.relpath(p, workdir) for p in paths if os.path.isfile(p)]


def write_report(workdir: str, config: ml_collections.ConfigDict, metrics: dict) -> str:
    """Write report.md; returns its path."""
    lines = [
        f"# {config.task} on `{config.data.name}`",
        "",
        f"Stages: {', '.join(config.stages)}. Resolved config: [config.json](config.json); "
        "metrics: [metrics.json](metrics.json).",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()) if "/" not in k]
    lines += ["", "## Images", ""]
    for rel in _images(workdir):
        lines += [f"**{rel}**", "", f"![{rel}]({rel})", ""]
    if "samples.png" in _images(workdir):
        lines += ["`samples.png`: one row per prompt, `the digit zero` … `the digit nine`.", ""]
    lines += [
        "## Curves",
        "",
        "Per-stage scalars: `<stage>/metrics.jsonl` (one JSON object per logged step) and "
        "TensorBoard events in `<stage>/tb` (`tensorboard --logdir .`).",
        "",
        "<details><summary>config</summary>",
        "",
        "```json",
        json.dumps(json.loads(config.to_json_best_effort()), indent=2),
        "```",
        "</details>",
        "",
    ]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
