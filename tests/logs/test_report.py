"""report.html: self-contained (every image a decodable PNG data URI), shows every grid, curve,
metric and the config, escapes what comes from data, and survives missing or damaged inputs."""

import base64
import html
import io
import json
import os
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from configs import vqdit_img
from crossmodal_jax.logs.pictures import save_png
from crossmodal_jax.logs.report import write_report

METRICS = {
    "test_psnr_db": 17.25,
    "test_codebook_usage": 0.75,
    "sample_digit_accuracy": 0.5,
    "sample_digit_accuracy/zero": 1.0,
    "sample_digit_accuracy/one": 0.0,
    "test_bleu": float("nan"),
}
EVIL = "<script>alert('x')</script>"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.text, self.pre, self._in_pre = [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        assert tag != "script", "the report must not contain a <script> element"
        self._in_pre |= tag == "pre"

    def handle_endtag(self, tag):
        self._in_pre &= tag != "pre"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_pre:
            self.pre.append(data)


def _parse(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    page = _Page()
    page.feed(source)
    page.close()
    pngs = []
    for img in page.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["src"][:60]
        png = base64.b64decode(img["src"][len(prefix) :], validate=True)
        Image.open(io.BytesIO(png)).verify()  # a complete, valid PNG
        assert Image.open(io.BytesIO(png)).format == "PNG"
        pngs.append((img.get("alt", ""), png))
    return source, "".join(page.text), pngs, "".join(page.pre)


def _rows(n, **extra):
    return [
        {"step": 2 * (i + 1), "loss": 1.0 / (i + 1), "grad_norm": 0.5, **extra} for i in range(n)
    ]


def _write_jsonl(path, rows, tail=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write(tail)


def _grid(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(path, np.random.default_rng(seed).integers(0, 255, (12, 20, 1), dtype=np.uint8))


def test_report_embeds_every_grid_curve_metric_and_escapes_data(tmp_path):
    workdir = str(tmp_path)
    config = vqdit_img.get_config("smoke")
    _write_jsonl(
        f"{workdir}/tokenizer/metrics.jsonl",
        _rows(3, psnr=9.0, steps_per_sec=3.0),
        tail='{"step": 8, "loss": 0.',  # a run killed mid-write
    )
    # NaN/Inf as json writes them; a resumed run logs step 4 again.
    _write_jsonl(
        f"{workdir}/generator/metrics.jsonl",
        _rows(3) + [{"step": 4, "loss": float("nan"), "grad_norm": float("inf")}],
    )
    _write_jsonl(f"{workdir}/eval/metrics.jsonl", [{"step": 6, **METRICS}])  # no curve for eval/
    for i, name in enumerate(["reconstructions_000002", "reconstructions_000006"]):
        _grid(f"{workdir}/tokenizer/{name}.png", i)
    for i, name in enumerate(["samples_000004", "samples_000006"]):
        _grid(f"{workdir}/generator/{name}.png", 10 + i)
    _grid(f"{workdir}/samples.png", 20)
    captions = [{"index": i, "text": f"{EVIL} & {i}", "reference": "a <b>"} for i in range(30)]
    _write_jsonl(f"{workdir}/test_captions.jsonl", captions)

    path = write_report(workdir, config, METRICS, wall_seconds=125.0)

    assert path == os.path.join(workdir, "report.html") and os.path.isfile(path)
    source, text, pngs, pre = _parse(path)
    shown = [png for _, png in pngs]
    newest = ["tokenizer/reconstructions_000006", "generator/samples_000006", "samples"]
    for rel in newest:
        with open(f"{workdir}/{rel}.png", "rb") as f:
            assert f.read() in shown, rel
    for rel in ["tokenizer/reconstructions_000002", "generator/samples_000004"]:
        with open(f"{workdir}/{rel}.png", "rb") as f:
            assert f.read() not in shown, f"{rel} is not the newest grid"
    curves = [alt for alt, _ in pngs if alt.endswith("curves")]
    assert curves == ["tokenizer curves", "generator curves"]
    assert len(pngs) == len(newest) + len(curves)

    for key in METRICS:
        assert key in text, key
    assert "17.25" in text and "2m05s" in text
    assert "1 unreadable line(s)" in text  # the torn line is named, the rows before it plotted
    assert json.loads(pre) == json.loads(config.to_json_best_effort())  # the resolved config
    # Captions: the first 20 only, and only ever escaped.
    assert text.count(EVIL) == 20 and f"{EVIL} & 19" in text and f"{EVIL} & 20" not in text
    assert EVIL not in source and html.escape(EVIL) in source


def test_report_without_metrics_or_images_still_writes(tmp_path):
    workdir = str(tmp_path)
    config = vqdit_img.get_config("smoke")
    os.makedirs(f"{workdir}/tokenizer")  # a stage that logged nothing yet
    _write_jsonl(f"{workdir}/generator/metrics.jsonl", [], tail="not json\n")
    with open(f"{workdir}/samples.png", "wb") as f:
        f.write(b"\x89PNG\r\n")  # truncated: left out, named

    path = write_report(workdir, config, {})

    source, text, pngs, _ = _parse(path)
    assert pngs == []
    assert "No final metrics" in text and "No logged scalars" in text
    assert "samples.png: not a readable PNG" in text
    assert source.rstrip().endswith("</html>")
