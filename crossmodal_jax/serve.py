"""The local web demo of a trained workdir: a page to generate images from prompts and to caption
uploaded images, speech and video clips.

    python -m crossmodal_jax.serve --workdir=runs/shapes_joint            # http://127.0.0.1:8000/

The page and its JSON API (crossmodal_jax/serving/server.py) use the standard library only and
fetch nothing from elsewhere: it works offline. Concurrent requests with the same task, sampler
settings and seed are batched into one model call (--batch_window_ms, --nobatching; see
crossmodal_jax/serving/batcher.py): a request batched with others may get another sample than it
would alone for the same seed. Requests go through crossmodal_jax.pipeline, as the sample CLI's:
a request alone gives what `Pipeline.generate([prompt], seed=...)` gives.

The demo has no login: it listens on the loopback interface unless --host says otherwise.
"""

from __future__ import annotations

import logging
import signal
import sys

from absl import app, flags

from crossmodal_jax.config.workdir import load_resolved_config
from crossmodal_jax.errors import UserError, fail, one_line
from crossmodal_jax.logs.writers import quiet_library_logs
from crossmodal_jax.training import compile_cache

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by crossmodal_jax.main.")
_HOST = flags.DEFINE_string(
    "host", "127.0.0.1", "Interface to listen on (0.0.0.0: every one; the demo has no login)."
)
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free one).")
_WINDOW = flags.DEFINE_float(
    "batch_window_ms",
    20.0,
    "How long the first queued request waits for others to share its model call.",
)
_BATCHING = flags.DEFINE_boolean(
    "batching", True, "Batch concurrent requests (--nobatching: each request runs alone)."
)
_WARMUP = flags.DEFINE_boolean(
    "warmup",
    True,
    "Compile every task's samplers (default settings, every batch size) before serving, so "
    "that the first requests do not wait for compilation.",
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        fail("--workdir is required")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_library_logs()
    try:
        config = load_resolved_config(_WORKDIR.value)
        compile_cache.enable(config.compilation_cache_dir)  # the workdir's run's cache
        from crossmodal_jax.pipeline import Pipeline
        from crossmodal_jax.serving import make_server

        pipe = Pipeline(_WORKDIR.value, config)
        print(
            f"loading {_WORKDIR.value} ({', '.join(pipe.tasks)})"
            + (" and compiling its samplers" if _WARMUP.value else ""),
            flush=True,
        )
        server = make_server(
            pipe,
            _HOST.value,
            _PORT.value,
            batching=_BATCHING.value,
            batch_window_ms=_WINDOW.value,
            warmup=_WARMUP.value,
        )
    except UserError as e:
        fail(one_line(e))
    except OSError as e:  # the port is taken, or the host is not an interface of this machine
        fail(f"cannot listen on {_HOST.value}:{_PORT.value}: {one_line(e)}")
    if _HOST.value not in LOOPBACK:
        print(f"warning: listening on {_HOST.value}: anyone who can reach it can use the demo")
    print(f"serving the demo at {server.url} (Ctrl-C to stop)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does, cleanly
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
