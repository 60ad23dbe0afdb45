"""The web demo (crossmodal_jax.serve) over the joint smoke workdir (configs/shapes_joint.py:smoke,
trained once per test run), served in-process on a free loopback port: the same outputs as the
Pipeline for the same seed, one-line 400s for bad input with the server still serving, concurrent
requests batched into fewer model calls, and the page driven by a real headless chromium.

The browser test saves a screenshot of the page to $CROSSMODAL_SCREENSHOT when it is set
(docs/serve.png was taken that way)."""

import base64
import http.client
import io
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from cli_helpers import DEVICES, shapes_inputs
from PIL import Image
from scipy.io import wavfile

from crossmodal_jax.data.text import ClassTokenizer
from crossmodal_jax.errors import UserError
from crossmodal_jax.pipeline import Pipeline
from crossmodal_jax.serving import Demo, make_server
from crossmodal_jax.serving.uploads import MAX_UPLOAD_BYTES, wav_seconds

CONFIG = "configs/shapes_joint.py:smoke"
PROMPT = "a red triangle above a cyan cross"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(smoke_workdir):
    workdir, _, _ = smoke_workdir(CONFIG)
    # The sample CLI's devices (tests/cli/cli_helpers.DEVICES): the same sharded programs.
    pipe = Pipeline.from_workdir(workdir, devices=jax.devices()[:DEVICES])
    server = make_server(pipe, "127.0.0.1", 0)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_dir):
    """A 64×64 scene .png, a 22.05 kHz .wav and a 48×48 .gif clip (other sizes than training)."""
    root = tmp_path_factory.mktemp("serve_inputs")
    return {
        kind: str(root / kind / shapes_inputs(kind, root / kind, data_dir)[0])
        for kind in ("i2t", "s2t", "v2t")
    }


def on_worker(server, fn):
    """`fn()` on the demo's model thread (the pipeline is never called from two threads)."""
    return server.demo.batcher.call(fn).result()


def call(server, path, data=None, headers=None):
    """(status, JSON answer) of a request; POST when there is a body."""
    request = urllib.request.Request(server.url + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def generate(server, **fields):
    return call(server, "api/generate", json.dumps(fields).encode())


def caption(server, data, name, **params):
    query = urllib.parse.urlencode({"name": name, **params})
    return call(server, f"api/caption?{query}", data)


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert image.format == "PNG"
    return np.asarray(image)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_wav_length_is_read_from_the_header():
    buf = io.BytesIO()
    wavfile.write(buf, 8000, np.zeros(8000 * 3, np.int16))
    assert wav_seconds(buf.getvalue()) == 3.0
    assert wav_seconds(buf.getvalue()[:2000]) == pytest.approx((2000 - 44) / 16000)
    assert wav_seconds(b"not a wav") is None


class ClassPipeline:
    """A stand-in Pipeline of one class-conditional text→image task (no model)."""

    buckets, tasks = (1, 8), ("text2image",)
    text = ClassTokenizer(["cat", "dog"])
    task_for = Pipeline.task_for

    def experiment(self, task):
        return SimpleNamespace(text=self.text)

    def sample_settings(self, task):
        return {"sampler": "ddim", "steps": 4, "guidance": 3.0}

    def warmup(self, task):
        raise UserError("prompt 0 (''): not a class")  # a task that cannot be warmed up

    def generate(self, prompts, *, task, seed, **sample):
        return np.full((len(prompts), 4, 4, 3), seed, np.uint8)


def test_a_class_conditional_model_takes_class_prompts():
    demo = Demo(ClassPipeline(), warmup=True)  # a failed warm-up serves the task cold
    try:
        assert demo.tasks_json()["tasks"][0]["classes"] == ["cat", "dog"]
        answer = demo.generate(json.dumps({"prompt": "dog", "seed": 3}).encode())
        assert (decode(answer["image"]) == 3).all()
        with pytest.raises(UserError, match="'bird' is not one of this model's 2 classes"):
            demo.generate(b'{"prompt": "bird"}')
    finally:
        demo.close()


def test_answers_equal_the_pipeline(server, inputs):
    pipe = server.demo.pipe
    status, tasks = call(server, "api/tasks")
    assert status == 200
    t2i = next(t for t in tasks["tasks"] if t["name"] == "text2image")
    assert (t2i["source"], t2i["target"]) == ("text", "image") and t2i["steps"] >= 1
    assert {t["name"] for t in tasks["tasks"]} == set(pipe.tasks)

    status, answer = generate(server, prompt=PROMPT, seed=5)
    assert status == 200, answer
    image = decode(answer["image"])  # at the model's resolution (the page enlarges it)
    assert image.shape == (answer["height"], answer["width"], 3) == (32, 32, 3)
    want = on_worker(server, lambda: pipe.generate([PROMPT], seed=5))[0]
    np.testing.assert_array_equal(image, want)

    for path in inputs.values():
        status, answer = caption(server, read(path), os.path.basename(path), seed=2)
        assert status == 200, answer
        assert answer["text"] == on_worker(server, lambda p=path: pipe.caption([p], seed=2))[0]


def _raw(server, headers: dict, body: bytes = b"", path: str = "/api/generate"):
    """A request with exactly these headers (urllib would add a Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.putrequest("POST", path)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body or None)
    response = conn.getresponse()
    answer = response.status, json.loads(response.read())
    conn.close()
    return answer


def test_bad_requests_are_one_line_errors_and_the_server_goes_on(server, inputs, monkeypatch):
    png, wav, gif = (read(inputs[k]) for k in ("i2t", "s2t", "v2t"))
    long_wav = io.BytesIO()
    wavfile.write(long_wav, 8000, np.zeros(8000 * 61, np.int16))
    cases = [
        (lambda: call(server, "api/generate", b"{not json"), "the request body is not JSON"),
        (lambda: call(server, "api/generate", b"[1]"), "must be a JSON object"),
        (lambda: generate(server, seed=1), "missing field: prompt"),
        (lambda: generate(server, prompt="   "), "empty prompt"),
        (lambda: generate(server, prompt="a purple circle"), "the word 'purple' is not in"),
        (lambda: generate(server, prompt=PROMPT, steps=0), "steps must be an integer from 1"),
        (lambda: generate(server, prompt=PROMPT, guidance="x"), "guidance must be a number"),
        (lambda: generate(server, prompt=PROMPT, seed=-1), "seed must be an integer"),
        (lambda: generate(server, prompt=PROMPT, task="nope"), "task 'nope': this workdir"),
        (lambda: generate(server, prompt=PROMPT, task="image2text"), "does not read text"),
        (lambda: generate(server, prompt=PROMPT, sampler="nope"), "unknown sampler 'nope'"),
        (lambda: generate(server, prompt=PROMPT, step=3), "unknown field 'step'"),
        (lambda: caption(server, b"hello", "notes.txt"), "notes.txt: not an input file"),
        (lambda: call(server, "api/caption", png), "missing parameter: name"),
        (lambda: caption(server, b"", "empty.png"), "empty.png: empty upload"),
        (lambda: caption(server, png[:60], "cut.png"), "cut.png: cannot read image"),
        (lambda: caption(server, b"GIF89a" + b"\0" * 40, "bad.gif"), "bad.gif: cannot read GIF"),
        (lambda: caption(server, wav[:30], "cut.wav"), "cut.wav: cannot read WAV audio"),
        (lambda: caption(server, png, "scene.wav"), "scene.wav: cannot read WAV audio"),
        (lambda: caption(server, long_wav.getvalue(), "long.wav"), "long.wav: 61.0 s of audio"),
        (lambda: caption(server, b"\0" * (MAX_UPLOAD_BYTES + 1), "big.png"), "the limit is"),
        (lambda: caption(server, png, "scene.png", task="speech2text"), "does not read image"),
        (lambda: _raw(server, {"Content-Length": "abc"}), "bad Content-Length 'abc'"),
        (lambda: _raw(server, {}), "the request has no Content-Length"),
    ]
    for send, message in cases:
        status, answer = send()
        assert status == 400 and message in answer["error"], (message, status, answer)
        assert "\n" not in answer["error"]
        assert generate(server, prompt=PROMPT)[0] == 200  # still serving

    # Another site's page cannot use the demo through the visitor's browser.
    status, answer = _raw(server, {"Content-Length": "2", "Origin": "http://evil.example"}, b"{}")
    assert status == 403 and "cross-origin" in answer["error"]
    assert call(server, "api/nope", b"{}")[0] == 404

    # A bug answers 500 in one line, and the server goes on.
    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(server.demo.pipe, "generate", broken)
    status, answer = generate(server, prompt=PROMPT)
    assert status == 500 and answer["error"] == "internal error (RuntimeError): a bug"
    monkeypatch.undo()
    assert generate(server, prompt=PROMPT)[0] == 200
    assert caption(server, png, "scene.png")[0] == 200


def test_a_connection_is_kept_alive_between_answers(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    try:
        body = json.dumps({"prompt": PROMPT}).encode()
        socks = []
        for _ in range(2):
            conn.request("POST", "/api/generate", body)
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["width"] == 32
            socks.append(conn.sock)
        assert socks[0] is socks[1] is not None  # the same connection answered both
        conn.request("POST", "/api/generate", b"{")  # an error closes it, saying so
        response = conn.getresponse()
        assert response.status == 400 and response.getheader("Connection") == "close"
        response.read()
        conn.request("POST", "/api/generate", body)  # the client opens a new one
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_concurrent_requests_share_model_calls(server):
    batcher = server.demo.batcher

    def burst(n: int) -> list:
        answers = [None] * n

        def one(i):
            answers[i] = generate(server, prompt=PROMPT, seed=7)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(status == 200 for status, _ in answers), answers
        return [decode(a["image"]) for _, a in answers]

    calls = batcher.calls
    images = burst(32)
    assert all(image.shape == (32, 32, 3) and image.dtype == np.uint8 for image in images)
    assert batcher.calls - calls < 32, list(batcher.batch_sizes)  # requests shared calls

    # One at a time: every request runs alone, so equal requests get equal images.
    batcher.batching = False
    try:
        calls = batcher.calls
        images = burst(6)
        assert batcher.calls - calls == 6
        for image in images:
            np.testing.assert_array_equal(image, images[0])
    finally:
        batcher.batching = True


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing (make install-system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path: selenium-manager is not run
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_in_a_browser(server, inputs, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pipe = server.demo.pipe
    find = lambda element_id: browser.find_element(By.ID, element_id)
    wait = WebDriverWait(browser, 60)

    def click(element_id):
        done = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
        find(element_id).click()
        body = browser.find_element(By.TAG_NAME, "body")
        wait.until(lambda _: int(body.get_attribute("data-done")) > done)

    browser.get(server.url)
    wait.until(lambda _: len(find("tasks").find_elements(By.TAG_NAME, "li")) == len(pipe.tasks))
    assert not find("error").is_displayed()

    find("prompt").send_keys(PROMPT)
    find("seed").send_keys(Keys.RIGHT)  # the seed slider: 0 -> 1
    assert find("seed-value").text == "1"
    click("generate")
    src = find("result-image").get_attribute("src")
    assert src == generate(server, prompt=PROMPT, seed=1)[1]["image"], find("error").text

    for kind in ("i2t", "s2t", "v2t"):
        find("file").send_keys(inputs[kind])
        click("caption")
        want = on_worker(server, lambda k=kind: pipe.caption([inputs[k]], seed=1))[0]
        assert find("result-text").text == want and not find("error").is_displayed()

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n0000")
    find("file").send_keys(str(broken))
    click("caption")
    assert find("error").is_displayed() and "broken.png: cannot read image" in find("error").text

    find("file").send_keys(inputs["i2t"])  # a later request still works
    click("caption")
    assert not find("error").is_displayed()
    assert (
        find("result-text").text
        == on_worker(server, lambda: pipe.caption([inputs["i2t"]], seed=1))[0]
    )
    if os.environ.get("CROSSMODAL_SCREENSHOT"):  # the page at exactly 1000×700 (docs/serve.png)
        size = {"width": 1000, "height": 700, "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
        browser.save_screenshot(os.environ["CROSSMODAL_SCREENSHOT"])
