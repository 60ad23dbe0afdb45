"""The end-of-run report: `<workdir>/report.html`, the page a person opens first.

One self-contained file: the curves (matplotlib, rendered to PNG in memory) and the image grids the
run wrote are embedded as base64 data URIs, so the page can be mailed or opened anywhere without
the workdir. It shows the final metrics, one figure of curves per stage (from
`<stage>/metrics.jsonl`), the newest grid of each kind per stage and `samples.png`, the first test
captions of an X→text task, and the resolved config. Every string that comes from data is escaped.

A missing file, a torn last line of a jsonl (a killed run), NaN values or an unreadable PNG leave
their section short or empty and say so; they never stop the report.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import json
import logging
import math
import os
import re
import struct
import time

import ml_collections

from crossmodal_jax.logs.writers import write_json

log = logging.getLogger("crossmodal_jax")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_CAPTIONS = 20
_CAPTIONS = {
    "reconstructions": "test inputs (top row) and their reconstructions (bottom row)",
    "samples": "samples, one row per prompt",
}
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-family: monospace; }
.bad { color: #b00; }
figure { margin: 1em 0; }
img { max-width: 100%; height: auto; }
img.grid { image-rendering: pixelated; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 85%; }
"""


def _read_jsonl(path: str) -> tuple[list[dict], int]:
    """Rows of a jsonl file and how many lines could not be read (a run killed mid-write leaves
    a torn last line; the rows before it are still good)."""
    rows, bad = [], 0
    if not os.path.isfile(path):
        return rows, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if bad:
        log.warning("report: skipped %d unreadable line(s) of %s", bad, path)
    return rows, bad


def _fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return html.escape(str(value))
    if not math.isfinite(value):
        return f'<span class="bad">{value}</span>'
    return f"{value:.4g}"


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    # Tiny grids (8x8 digits) are shown enlarged; `image-rendering: pixelated` keeps them sharp.
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk always comes first
    scale = max(1, min(4, 512 // max(width, height, 1)))
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'width="{width * scale}" height="{height * scale}">'
    )


THROUGHPUT = ("steps_per_sec", "examples_per_sec", "tflops_per_device", "mfu")


def _curves_png(rows: list[dict]) -> bytes | None:
    """One small subplot per logged scalar; None when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, no display needed

    by_step: dict = {}
    for row in rows:  # a resumed run logs some steps again: the later value wins
        if isinstance(row.get("step"), int | float):  # an eval/ row joins its step's row
            by_step.setdefault(row["step"], {}).update(row)
    keys = []
    for row in by_step.values():
        keys += [k for k, v in row.items() if k != "step" and k not in keys and _is_num(v)]
    if not keys:
        return None
    # loss first (what one looks at first), the throughput last.
    keys.sort(key=lambda k: (k != "loss", k in THROUGHPUT))
    steps = sorted(by_step)
    cols = min(4, len(keys))
    rows_n = -(-len(keys) // cols)
    height = 2.3 * rows_n
    fig = Figure(figsize=(3.2 * cols, height), dpi=80)
    FigureCanvasAgg(fig)
    # Fixed margins in inches: matplotlib's constrained layout measures every tick label and
    # took half of the ~4 s a report cost.
    fig.subplots_adjust(
        left=1.25 / (3.2 * cols),  # room for log-scale tick labels
        right=0.98,
        top=1 - 0.3 / height,
        bottom=0.45 / height,
        wspace=0.35,
        hspace=0.75,
    )
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        at = [s for s in steps if key in by_step[s]]  # eval/ scalars: every eval.every steps
        raw = [by_step[s][key] for s in at]
        # NaN/Inf break the line rather than wreck the axis limits; the title counts them.
        nonfinite = sum(1 for v in raw if _is_num(v) and not math.isfinite(v))
        values = [float(v) if _is_num(v) and math.isfinite(v) else math.nan for v in raw]
        ax.plot(at, values, marker="." if len(at) < 30 else None, lw=1)
        finite = [v for v in values if not math.isnan(v)]
        if "loss" in key and finite and min(finite) > 0:
            ax.set_yscale("log")
        title = key + (f" ({nonfinite} non-finite)" if nonfinite else "")
        ax.set_title(title, fontsize=9, color="#b00" if nonfinite else "black")
        ax.tick_params(which="both", labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _stage_dirs(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """The config's stages in training order, then any other stage directory with metrics
    (e.g. a per-modality tokenizer); `eval/` holds the final metrics, not curves. A stage without
    a folder here is left out (a joint run's tokenizers train in their tasks' folders)."""
    names = [s for s in config.stages if os.path.isdir(os.path.join(workdir, s))]
    for path in sorted(glob.glob(os.path.join(workdir, "*", "metrics.jsonl"))):
        name = os.path.basename(os.path.dirname(path))
        if name not in names and name != "eval":
            names.append(name)
    return names


def _grids(workdir: str, stages: list[str]) -> list[str]:
    """Workdir-relative paths of the newest grid of each kind per stage, then samples.png.
    Grids are `<kind>_<step:06d>.png`, so the name order is the step order."""
    paths = []
    for stage in stages:
        newest = {}
        for path in sorted(glob.glob(os.path.join(workdir, stage, "*.png"))):
            newest[re.sub(r"_\d+$", "", os.path.basename(path)[:-4])] = path
        paths += sorted(newest.values())
    paths.append(os.path.join(workdir, "samples.png"))
    return [os.path.relpath(p, workdir) for p in paths if os.path.isfile(p)]


def _grid_section(workdir: str, rel: str) -> str:
    with open(os.path.join(workdir, rel), "rb") as f:
        png = f.read()
    if not png.startswith(_PNG_MAGIC) or len(png) < 24:
        log.warning("report: %s is not a readable PNG; left out", rel)
        return f'<p class="bad">{html.escape(rel)}: not a readable PNG</p>'
    kind = re.sub(r"_\d+$", "", os.path.basename(rel)[:-4])
    caption = html.escape(f"{rel}: {_CAPTIONS.get(kind, kind)}")
    return f"<figure>{_img(png, rel, 'grid')}<figcaption>{caption}</figcaption></figure>"


def _metrics_section(metrics: dict) -> list[str]:
    if not metrics:
        return ["<p>No final metrics.</p>"]
    top = {k: v for k, v in metrics.items() if "/" not in k}
    out = ["<table><tr><th>metric</th><th>value</th></tr>"]
    out += [
        f'<tr><td>{html.escape(k)}</td><td class="num">{_fmt(v)}</td></tr>'
        for k, v in sorted(top.items())
    ]
    out.append("</table>")
    groups: dict[str, dict] = {}
    for k, v in metrics.items():
        if "/" in k:
            group, _, name = k.partition("/")
            groups.setdefault(group, {})[name] = v
    for group, values in sorted(groups.items()):
        out.append(f"<details><summary>{html.escape(group)} per class</summary><table>")
        out += [
            f'<tr><td>{html.escape(f"{group}/{name}")}</td><td class="num">{_fmt(v)}</td></tr>'
            for name, v in values.items()  # as evaluated (zero … nine), not alphabetical
        ]
        out.append("</table></details>")
    return out


def _captions_section(workdir: str) -> list[str]:
    rows, bad = _read_jsonl(os.path.join(workdir, "test_captions.jsonl"))
    if not rows and not bad:
        return []
    out = [
        f"<h2>Test captions (first {min(len(rows), _MAX_CAPTIONS)} of {len(rows)})</h2>",
        "<table><tr><th>#</th><th>generated</th><th>reference</th></tr>",
    ]
    for row in rows[:_MAX_CAPTIONS]:
        cells = (row.get("index", ""), row.get("text", ""), row.get("reference", ""))
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    if bad:
        out.append(f'<p class="bad">{bad} unreadable line(s) in test_captions.jsonl</p>')
    return out


def write_report(
    workdir: str,
    config: ml_collections.ConfigDict,
    metrics: dict,
    wall_seconds: float | None = None,
) -> str:
    """Write `<workdir>/report.html`; returns its path. `wall_seconds`: this invocation's time."""
    from crossmodal_jax.logs.progress import format_duration

    if "data" in config:
        title = f"{config.task} on {config.data.name}"
    else:  # a joint run: its tasks' reports are in their folders
        title = f"{config.task}: {', '.join(sorted(config.tasks))}"
    stages = _stage_dirs(workdir, config)
    header = [
        ("stages", ", ".join(config.stages)),
        ("workdir", os.path.abspath(workdir)),
        ("written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    if wall_seconds is not None:
        header.append(("wall time of this run", format_duration(wall_seconds)))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table>",
    ]
    out += [f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in header]
    out += ["</table>", "<h2>Final metrics</h2>", *_metrics_section(metrics), "<h2>Curves</h2>"]
    for stage in stages:
        rows, bad = _read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
        png = _curves_png(rows)
        out.append(f"<h3>{html.escape(stage)}</h3>")
        if png is None:
            out.append(f"<p>No logged scalars in {html.escape(stage)}/metrics.jsonl.</p>")
        else:
            out.append(f"<figure>{_img(png, f'{stage} curves', 'curves')}</figure>")
        if bad:
            out.append(f'<p class="bad">{bad} unreadable line(s) in metrics.jsonl skipped</p>')
    grids = _grids(workdir, stages)
    out.append("<h2>Images</h2>")
    out += [_grid_section(workdir, rel) for rel in grids] or ["<p>No image grids.</p>"]
    out += _captions_section(workdir)
    resolved = json.dumps(json.loads(config.to_json_best_effort()), indent=2)
    out += [
        "<h2>Resolved config</h2>",
        f"<details><summary>config.json</summary><pre>{html.escape(resolved)}</pre></details>",
        "</body></html>",
        "",
    ]
    path = os.path.join(workdir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return path


def write_results(
    workdir: str, config: ml_collections.ConfigDict, metrics: dict, wall_seconds: float
) -> str:
    """A finished run's `metrics.json` and `report.html` (process 0 calls it); returns the
    report's path. A bug in the report must not fail a finished run: its traceback is logged."""
    write_json(os.path.join(workdir, "metrics.json"), metrics, indent=2, sort_keys=True)
    try:
        return write_report(workdir, config, metrics, wall_seconds)
    except Exception:
        log.exception("report.html not written")
        return "no report (error above)"
