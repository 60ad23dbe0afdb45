"""Gaussian vs masked diffusion side by side: sample quality and sampling time of trained workdirs.

  python benchmarks/process_compare.py --workdirs=runs/vqdit_img,runs/vqdit_masked \
      [--per_digit=30] [--repeats=5] [--seed=0] [--batch_size=32] [--guidance=G] [--steps=S]

Restores each workdir's sampler once (crossmodal_jax.pipeline, as the sample CLI) and generates
`per_digit` images for each prompt "the digit <word>" exactly as the `sample` CLI does (same seed,
same --batch_size chunks), so the images equal the CLI's PNGs. --seed, --batch_size, --guidance and
--steps are the `sample` CLI's flags and apply to every workdir.

Timing: the first pass (trace + compile + run) is reported on its own; then --repeats timed passes
per run, alternating between the runs (order reversed every other round: A B, B A, ...) because
the machine may be shared; the median pass is reported as ms per image and as a ratio to the first
workdir. Quality: the three classifiers of sample_quality.py (kNN-3, MLP, logistic regression on all
1797 load_digits images), the within-prompt spread (mean pairwise L2 distance between images of one
prompt: accuracy alone would reward drawing one safe digit per prompt), plus the workdir's own
metrics.json (train-split SVC, 8 per digit) and its tokenizer's test PSNR. Prints a markdown table;
last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from sample_quality import CLASSIFIERS, fit_classifiers, judge
from sklearn.datasets import load_digits

import crossmodal_jax.sample  # noqa: F401  defines --seed, --batch_size, --steps, ...
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.errors import UserError, fail
from crossmodal_jax.evaluation.digits_judge import digit_prompts
from crossmodal_jax.logs.writers import quiet_library_logs
from crossmodal_jax.pipeline import Pipeline, buckets_up_to

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Trained text→image workdirs, comma-separated.")
_PER_DIGIT = flags.DEFINE_integer("per_digit", 30, "Samples per digit prompt.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed passes per workdir after the first.", lower_bound=1
)
FLAGS = flags.FLAGS  # --seed, --batch_size, --guidance, --steps, --sampler: crossmodal_jax.sample's


class Run:
    """One workdir's pipeline (the sample CLI's: same buckets, keys and images) and its passes."""

    def __init__(self, workdir: str, config, prompts: list[str]):
        self.workdir, self.config, self.prompts = workdir, config, prompts
        self.pipe = Pipeline(workdir, config, buckets=buckets_up_to(FLAGS.batch_size))
        overrides = dict(steps=FLAGS.steps, guidance=FLAGS.guidance, sampler=FLAGS.sampler)
        self.settings = self.pipe.sample_settings(config.task, **overrides)
        self.times: list[float] = []

    def sample(self) -> tuple[np.ndarray, float]:
        """uint8 images [N, H, W, C] of every prompt, and the seconds the pass took."""
        t0 = time.perf_counter()
        images = self.pipe.generate(self.prompts, seed=FLAGS.seed, **self.settings)
        return images, time.perf_counter() - t0


def time_alternating(runs: list[Run], repeats: int, reference: list[np.ndarray]) -> None:
    """Appends `repeats` pass times to each run, alternating runs; checks images stay identical."""
    for r in range(repeats):
        for i in range(len(runs))[:: -1 if r % 2 else 1]:
            images, seconds = runs[i].sample()
            if not np.array_equal(images, reference[i]):
                print(f"warning: {runs[i].workdir}: pass {r + 1} gave different images")
            runs[i].times.append(seconds)


def within_prompt_spread(images_u8: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise L2 distance between images of the same prompt, in load_digits units (0..16).

    Accuracy alone rewards a sampler that draws one safe digit per prompt; this shows diversity.
    """
    x = images_u8.reshape(len(images_u8), -1).astype(np.float64) / 255.0 * 16.0
    spreads = []
    for c in np.unique(labels):
        xc = x[labels == c]
        d = np.sqrt(((xc[:, None] - xc[None]) ** 2).sum(-1))
        spreads.append(d[np.triu_indices(len(xc), 1)].mean())
    return float(np.mean(spreads))


def read_metrics(workdir: str) -> dict:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def markdown_table(rows: list[dict]) -> str:
    names = list(CLASSIFIERS)
    head = (
        "| process | sampler | steps | guidance | first call s (compile + run) | ms/image (median) | × first "
        f"| {' | '.join(names)} | spread | metrics.json acc (SVC, 8/digit) | test PSNR dB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        accs = " | ".join(f"{100 * r[n]['accuracy']:.1f} %" for n in names)
        svc = r["metrics_sample_digit_accuracy"]
        psnr = r["metrics_test_psnr_db"]
        lines.append(
            f"| {r['process']} | {r['sampler']} | {r['steps']} | {r['guidance']:g} "
            f"| {r['first_pass_s']:.1f} | {r['ms_per_image']:.2f} | {r['ratio_to_first']:.2f} "
            f"| {accs} | {r['spread']:.1f} | {'n/a' if svc is None else f'{100 * svc:.1f} %'} "
            f"| {'n/a' if psnr is None else f'{psnr:.2f}'} |"
        )
    return "\n".join(lines)


def compare(workdirs: list[str], per_digit: int, repeats: int) -> list[dict]:
    prompts, labels = digit_prompts(per_digit)
    configs = [load_resolved_config(w) for w in workdirs]
    if any(c.task != "text2image" for c in configs):
        raise UserError("every workdir must be a text2image run")
    runs = [Run(w, c, prompts) for w, c in zip(workdirs, configs, strict=True)]
    firsts = [run.sample() for run in runs]  # restore + compile + run, in order
    time_alternating(runs, repeats, [im for im, _ in firsts])
    classifiers = fit_classifiers()
    rows = []
    for run, (im, first_s) in zip(runs, firsts, strict=True):
        metrics, sample_cfg = read_metrics(run.workdir), run.settings
        rows.append(
            {
                "workdir": run.workdir,
                "process": run.config.generator.diffusion.process,
                "sampler": sample_cfg["sampler"],
                "steps": sample_cfg["steps"],
                "guidance": sample_cfg["guidance"],
                "first_pass_s": round(first_s, 2),
                "pass_s": [round(t, 3) for t in run.times],
                "ms_per_image": round(1000 * statistics.median(run.times) / len(im), 3),
                **judge(classifiers, im, labels),
                "spread": round(within_prompt_spread(im, labels), 2),
                "metrics_sample_digit_accuracy": metrics.get("sample_digit_accuracy"),
                "metrics_test_psnr_db": metrics.get("test_psnr_db"),
            }
        )
    for r in rows:
        r["ratio_to_first"] = round(r["ms_per_image"] / rows[0]["ms_per_image"], 3)
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIRS.value:
        fail("--workdirs is required (comma-separated)")
    quiet_library_logs()
    try:
        rows = compare(_WORKDIRS.value, _PER_DIGIT.value, _REPEATS.value)
    except UserError as e:
        fail(str(e))
    digits = load_digits()
    real_spread = round(within_prompt_spread(digits.images * (255.0 / 16.0), digits.target), 2)
    n = 10 * _PER_DIGIT.value
    print(f"{n} samples per run (seed {FLAGS.seed}), median of {_REPEATS.value} alternating passes")
    print(markdown_table(rows))
    print(
        f"spread: mean pairwise L2 within a prompt (0..16 pixels); real digits per class: {real_spread}"
    )
    print(
        json.dumps(
            {
                "samples": n,
                "seed": FLAGS.seed,
                "repeats": _REPEATS.value,
                "devices": jax.devices()[0].platform,
                "real_digits_spread": real_spread,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
