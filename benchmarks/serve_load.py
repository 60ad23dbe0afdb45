"""Load on the web demo's server: requests/s and latency with and without batching.

  python benchmarks/serve_load.py --workdir=runs/shapes_joint [--requests=256] [--clients=1,8,32]
      [--batch_window_ms=20]

Starts the demo (crossmodal_jax.serving) in this process on a free loopback port over a trained
workdir with a text→image and an image→text task (a joint one: configs/shapes_joint.py; nothing is
trained here), compiles both tasks' samplers for every batch bucket, then, for each task and each
number of concurrent clients, sends --requests requests with batching on and then off (the
batcher's switch is flipped live; same server, same compiled samplers). Every request of a
setting has the same sampler settings and seed, so with batching on they may share model calls;
text→image prompts vary, image→text uploads are the PNGs of generated images.

Each client is a thread that sends its next request when the last one is answered, over one
kept-alive connection (http.client), as a browser tab would. Reported per setting: requests/s
over the whole setting (first request sent to last answer), p50 and p95 latency of single
requests, and the mean rows of a model call.
The clients, the HTTP threads and the model thread share this process (and its GIL): the numbers
are the server's as one machine sees them, client overhead included. Prints a markdown table,
the batched/one-at-a-time ratio at the most clients; last line: one JSON object with everything.
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import statistics
import threading
import time
import urllib.parse

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from crossmodal_jax import tasks
from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.errors import UserError, fail
from crossmodal_jax.logs.writers import quiet_library_logs
from crossmodal_jax.pipeline import Pipeline
from crossmodal_jax.serving import make_server
from crossmodal_jax.training import compile_cache

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir with text→image and image→text.")
_REQUESTS = flags.DEFINE_integer("requests", 256, "Requests per setting (after the warm-up).")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "32"], "Numbers of concurrent clients.")
_WINDOW = flags.DEFINE_float("batch_window_ms", 20.0, "The batcher's wait for more requests.")

PROMPTS = [
    "a red circle at top left",
    "a small blue square at bottom right",
    "a green triangle above a yellow cross",
    "a large magenta circle at center",
]


def post(conn: http.client.HTTPConnection, path: str, data: bytes) -> float:
    """Seconds until the answer (which must be 200), over the client's kept-alive connection."""
    start = time.perf_counter()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    return time.perf_counter() - start


def load(port: int, requests: list[tuple[str, bytes]], clients: int) -> tuple[float, list[float]]:
    """Send `requests` from `clients` threads, each over a connection of its own (as a browser
    keeps one); (seconds for all, latency of each)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    next_index = itertools.count()
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while (i := next(next_index)) < len(requests):
                seconds = post(conn, *requests[i])
                with lock:
                    latencies.append(seconds)
        except Exception as e:  # noqa: BLE001 - reported after the setting
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, the first: {errors[0]!r}")
    return time.perf_counter() - start, latencies


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str]) -> None:
    del argv
    if not _WORKDIR.value:
        fail("--workdir is required (a trained workdir, e.g. of configs/shapes_joint.py)")
    quiet_library_logs()
    try:
        config = load_resolved_config(_WORKDIR.value)
        compile_cache.enable(config.compilation_cache_dir)
        pipe = Pipeline(_WORKDIR.value, config)
        t2i = pipe.task_for(tasks.TEXT)
        i2t = pipe.task_for("image")
    except UserError as e:
        fail(str(e))
    server = make_server(pipe, "127.0.0.1", 0, batch_window_ms=_WINDOW.value)
    server.start()
    batcher = server.demo.batcher
    try:
        # Compiled up front for every bucket (as serve.py's --warmup); the uploads are generated.
        on_worker = lambda fn: batcher.call(fn).result()
        on_worker(lambda: (pipe.warmup(t2i), pipe.warmup(i2t)))
        images = on_worker(lambda: pipe.generate(PROMPTS, task=t2i, seed=1))
        port = server.server_address[1]
        generate_url = "/api/generate"
        caption_url = "/api/caption?" + urllib.parse.urlencode({"name": "scene.png"})
        work = {
            t2i: [
                (generate_url, json.dumps({"prompt": PROMPTS[i % len(PROMPTS)]}).encode())
                for i in range(_REQUESTS.value)
            ],
            i2t: [
                (caption_url, png_bytes(images[i % len(images)])) for i in range(_REQUESTS.value)
            ],
        }
        for requests in work.values():  # the HTTP path warmed up too
            load(port, requests[:8], 8)
        rows = []
        for task, requests in work.items():
            for clients in [int(c) for c in _CLIENTS.value]:
                for batching in (True, False):
                    batcher.batching = batching
                    calls = batcher.calls
                    seconds, latencies = load(port, requests, clients)
                    ms = sorted(1000 * s for s in latencies)
                    rows.append(
                        dict(
                            task=task,
                            clients=clients,
                            batching=batching,
                            requests=len(requests),
                            requests_per_s=len(requests) / seconds,
                            p50_ms=statistics.median(ms),
                            p95_ms=ms[min(len(ms) - 1, int(0.95 * len(ms)))],
                            mean_batch=len(requests) / max(1, batcher.calls - calls),
                        )
                    )
    finally:
        server.close()

    print(
        f"\n{jax.devices()[0].device_kind} ×{jax.device_count()}, window {_WINDOW.value:g} ms, "
        f"{_REQUESTS.value} requests a setting\n"
    )
    print("| task | clients | batching | requests/s | p50 ms | p95 ms | rows a call |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['task']} | {r['clients']} | {'on' if r['batching'] else 'off'} "
            f"| {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {r['mean_batch']:.1f} |"
        )
    most = max(int(c) for c in _CLIENTS.value)
    ratios = {}
    for task in work:
        on, off = (
            next(
                r["requests_per_s"]
                for r in rows
                if r["task"] == task and r["clients"] == most and r["batching"] == b
            )
            for b in (True, False)
        )
        ratios[task] = on / off
        print(f"\n{task}, {most} clients: batching gives {on / off:.2f}× the requests/s")
    print(
        json.dumps(
            dict(
                device=jax.devices()[0].device_kind,
                devices=jax.device_count(),
                batch_window_ms=_WINDOW.value,
                rows=rows,
                batching_speedup_at_most_clients=ratios,
            )
        )
    )


if __name__ == "__main__":
    app.run(main)
