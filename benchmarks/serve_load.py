"""Load on the web demo's server: requests/s and latency with and without batching.

  python benchmarks/serve_load.py --workdir=runs/shapes_joint [--requests=256] [--clients=1,8,32]
      [--batch_window_ms=20] [--client_processes=1]

Starts the demo (crossmodal_jax.serving) in this process on a free loopback port over a trained
workdir with a text→image and an image→text task (a joint one: configs/shapes_joint.py; nothing is
trained here), compiles both tasks' samplers for every batch bucket, then, for each task and each
number of concurrent clients, sends --requests requests with batching on and then off (the
batcher's switch is flipped live; same server, same compiled samplers). Every request of a
setting has the same sampler settings and seed, so with batching on they may share model calls;
text→image prompts vary, image→text uploads are the PNGs of generated images.

Each client is a thread that sends its next request when the last one is answered, over one
kept-alive connection (http.client), as a browser tab would. The client threads run in
--client_processes separate processes (multiprocessing, spawn: they import neither JAX nor the
model), started once and reused for every setting, the clients and requests split between them;
this process only serves (HTTP threads and the model thread), so the clients' Python does not
compete with the server for its GIL (they still share the machine's cores). Reported per
setting: requests/s over the whole setting (first request sent to last answer, on the
system-wide monotonic clock), p50 and p95 latency of single requests, the mean rows of a model
call, and (JSON only) the CPU seconds of the server and of the clients per request. Prints a
markdown table, the batched/one-at-a-time ratio at the most clients; last line: one JSON object
with everything.
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import multiprocessing
import os
import statistics
import threading
import time
import urllib.parse
from multiprocessing.connection import Connection

from absl import app, flags

# JAX, the model and PIL are imported in main(): the client processes (spawned, so they import
# this module again) need none of them.

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir with text→image and image→text.")
_REQUESTS = flags.DEFINE_integer("requests", 256, "Requests per setting (after the warm-up).")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "32"], "Numbers of concurrent clients.")
_WINDOW = flags.DEFINE_float("batch_window_ms", 20.0, "The batcher's wait for more requests.")
_CLIENT_PROCESSES = flags.DEFINE_integer(
    "client_processes", 1, "Processes the client threads run in (split between them)."
)

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


def load(port: int, requests: list[tuple[str, bytes]], clients: int) -> dict:
    """Send `requests` from `clients` threads, each over a connection of its own (as a browser
    keeps one); {start, end (time.monotonic), latencies (s), cpu_s (this process)}."""
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
    cpu = time.process_time()
    start = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, the first: {errors[0]!r}")
    return dict(start=start, end=end, latencies=latencies, cpu_s=time.process_time() - cpu)


def _client_main(conn: Connection) -> None:
    """A client process: runs `load` for each (port, requests, clients) received, sends back its
    result (or the one-line error); None ends it."""
    while (job := conn.recv()) is not None:
        try:
            conn.send(load(*job))
        except Exception as e:  # noqa: BLE001 - raised again in the server's process
            conn.send(f"{type(e).__name__}: {e}")
    conn.close()


class ClientPool:
    """`processes` client processes, started once; `load` splits a setting's clients and
    requests between them and merges their answers."""

    def __init__(self, processes: int):
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(max(1, processes)):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    def load(self, port: int, requests: list[tuple[str, bytes]], clients: int):
        """(seconds for all, latency of each, client CPU seconds), as the in-process `load`."""
        n = min(len(self.conns), clients)
        shares = [clients // n + (k < clients % n) for k in range(n)]
        bounds = [round(len(requests) * sum(shares[:k]) / clients) for k in range(n + 1)]
        for k in range(n):
            self.conns[k].send((port, requests[bounds[k] : bounds[k + 1]], shares[k]))
        answers = [self.conns[k].recv() for k in range(n)]
        failed = [a for a in answers if isinstance(a, str)]
        if failed:
            raise RuntimeError(f"a client process failed: {failed[0]}")
        seconds = max(a["end"] for a in answers) - min(a["start"] for a in answers)
        latencies = [s for a in answers for s in a["latencies"]]
        return seconds, latencies, sum(a["cpu_s"] for a in answers)

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def png_bytes(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str]) -> None:
    del argv
    import jax

    from crossmodal_jax import tasks
    from crossmodal_jax.config.workdir import load_resolved_config
    from crossmodal_jax.errors import UserError, fail
    from crossmodal_jax.logs.writers import quiet_library_logs
    from crossmodal_jax.pipeline import Pipeline
    from crossmodal_jax.serving import make_server
    from crossmodal_jax.training import compile_cache

    if not _WORKDIR.value:
        fail("--workdir is required (a trained workdir, e.g. of configs/shapes_joint.py)")
    if _CLIENT_PROCESSES.value < 1:
        fail("--client_processes must be at least 1")
    quiet_library_logs()
    # Started first: their start-up (a fresh interpreter each) overlaps loading the model.
    pool = ClientPool(_CLIENT_PROCESSES.value)
    try:
        config = load_resolved_config(_WORKDIR.value)
        compile_cache.enable(config.compilation_cache_dir)
        pipe = Pipeline(_WORKDIR.value, config)
        t2i = pipe.task_for(tasks.TEXT)
        i2t = pipe.task_for("image")
    except UserError as e:
        pool.close()
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
        for requests in work.values():  # the HTTP path (and the client processes) warmed up too
            pool.load(port, requests[:8], 8)
        rows = []
        for task, requests in work.items():
            for clients in [int(c) for c in _CLIENTS.value]:
                for batching in (True, False):
                    batcher.batching = batching
                    calls = batcher.calls
                    server_cpu = time.process_time()
                    seconds, latencies, client_cpu = pool.load(port, requests, clients)
                    server_cpu = time.process_time() - server_cpu
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
                            server_cpu_ms_per_request=1000 * server_cpu / len(requests),
                            client_cpu_ms_per_request=1000 * client_cpu / len(requests),
                        )
                    )
    finally:
        server.close()
        pool.close()

    print(
        f"\n{jax.devices()[0].device_kind} ×{jax.device_count()}, window {_WINDOW.value:g} ms, "
        f"{_REQUESTS.value} requests a setting, clients in {_CLIENT_PROCESSES.value} separate "
        f"process(es), {os.cpu_count()} CPU cores\n"
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
                clients_in="separate processes",
                client_processes=_CLIENT_PROCESSES.value,
                cpu_cores=os.cpu_count(),
                rows=rows,
                batching_speedup_at_most_clients=ratios,
            )
        )
    )


if __name__ == "__main__":
    app.run(main)
