"""The web demo's HTTP side: the standard library's threading server, one page, a JSON API.

    GET  /                 the page (serving/page.html: one file, inline CSS and JS, no remote asset)
    GET  /api/tasks        {tasks: [{name, source, target, steps, guidance, sampler, ...}], limits}
    POST /api/generate     JSON {prompt, task?, steps?, guidance?, sampler?, seed?} -> {image, ...}
    POST /api/caption?name=FILE&task=&steps=&guidance=&sampler=&seed=   body: the file's bytes
                           -> {text, ...}

Every answer is JSON. A request the user can fix answers 400 {"error": "<one line>"}, a full
queue 503, a bug 500 with one line (its traceback goes to the log); the server goes on serving
after any of them. Each request has a thread of its own (parsing, waiting); the model runs on the
batcher's one thread (serving/batcher.py).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crossmodal_jax.errors import UserError, one_line
from crossmodal_jax.pipeline import Pipeline
from crossmodal_jax.serving.app import Demo
from crossmodal_jax.serving.batcher import Busy

log = logging.getLogger("crossmodal_jax")

MAX_JSON_BYTES = 64 * 1024  # a generate request is a prompt and a few numbers
# A refused body is still read (up to this many bytes) before answering: closing a socket with
# unread data resets the connection, and the client would lose the answer saying why.
DRAIN_FACTOR = 4


class _Forbidden(Exception):
    """Answered 403."""


class _NotFound(Exception):
    """Answered 404."""


def _declared_length(value: str | None) -> int:
    """Content-Length as a byte count; 0 when absent or not a count (nothing to drain)."""
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "crossmodal-demo"
    # Keep-alive: a client's next request reuses its connection and its server thread (every
    # answer says its Content-Length). An idle connection is closed after `timeout` seconds, as
    # is one that stalls mid-request.
    protocol_version = "HTTP/1.1"
    timeout = 60

    def setup(self) -> None:
        super().setup()
        # The headers and the body of an answer are two writes: without this, Nagle's algorithm
        # holds the second until the client's delayed ACK (40 ms) on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ------------------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if _declared_length(self.headers.get("Content-Length")):
            self.close_connection = True  # a GET's body is not read: not a next request either
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/tasks":
            self._answer(self.server.demo.tasks_json, read_body=False)
        else:
            self._send_json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        demo = self.server.demo
        if url.path == "/api/generate":
            handle = lambda: demo.generate(self._body(MAX_JSON_BYTES))
        elif url.path == "/api/caption":
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            handle = lambda: demo.caption(query, self._body(demo.max_upload_bytes))
        else:
            handle = lambda: self._not_found(url.path)
        # On its way until queued: a batch being gathered waits for it (serving/batcher.py).
        with demo.batcher.request():
            self._answer(handle)

    def _not_found(self, path: str) -> dict:
        raise _NotFound(f"no such endpoint: POST {path}")

    # ---------------------------------------------------------------------------- answers

    def _answer(self, handle: Callable[[], dict], read_body: bool = True) -> None:
        """Run `handle` and send its JSON, or the one-line error of what went wrong."""
        self._unread = _declared_length(self.headers.get("Content-Length")) if read_body else 0
        try:
            self._check_origin()
            status, answer = 200, handle()
        except UserError as e:
            status, answer = 400, {"error": one_line(e)}
        except _Forbidden as e:
            status, answer = 403, {"error": one_line(e)}
        except _NotFound as e:
            status, answer = 404, {"error": one_line(e)}
        except Busy as e:
            status, answer = 503, {"error": one_line(e)}
        except Exception as e:  # a bug: logged in full, answered in one line, still serving
            log.exception("serving %s %s", self.command, self.path)
            status, answer = 500, {"error": f"internal error ({type(e).__name__}): {one_line(e)}"}
        self._drain()
        if status != 200:
            self.close_connection = True  # after an error, start the next request afresh
        self._send_json(status, answer)

    def _check_origin(self) -> None:
        """Refuse requests a browser sends on behalf of another site's page (their Origin names
        that site): the demo has no login, so any page could otherwise use its model."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            raise _Forbidden(f"cross-origin request from {origin} refused")

    def _body(self, limit: int) -> bytes:
        """The request body, at most `limit` bytes (a larger one is refused, not read)."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise UserError("the request has no Content-Length (the body must come whole)")
        try:
            n = int(length)
        except ValueError:
            raise UserError(f"bad Content-Length {length!r}") from None
        if n < 0:
            raise UserError(f"bad Content-Length {length!r}")
        if n > limit:
            raise UserError(f"request body of {n:,} bytes; the limit is {limit:,}")
        data = self.rfile.read(n)
        self._unread = 0
        if len(data) < n:
            raise UserError(f"request body cut short: {len(data):,} of {n:,} bytes")
        return data

    def _drain(self) -> None:
        if 0 < self._unread <= DRAIN_FACTOR * self.server.demo.max_upload_bytes:
            try:
                while self._unread > 0:
                    chunk = self.rfile.read(min(self._unread, 1 << 20))
                    if not chunk:
                        break
                    self._unread -= len(chunk)
            except OSError:
                pass  # the client went away; nothing to answer
        if self._unread:
            self.close_connection = True  # the rest of the body is still on the connection

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:  # the client must not send its next request on this one
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s %s", self.address_string(), format % args)


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server over a `Demo`; `url` says where, `close` stops it and its worker."""

    daemon_threads = True  # a stalled client never keeps the process from exiting
    # Connections waiting to be accepted (socketserver's default is 5): a burst of clients past
    # the backlog has its connections reset instead of queued.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], demo: Demo | None = None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.demo = demo
        self.page = resources.files("crossmodal_jax.serving").joinpath("page.html").read_bytes()
        self._serving = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its connection (a browser closing an idle kept-alive one) is
        routine: logged at debug level, without socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s: %s", client_address, one_line(error))
        else:
            log.exception("serving a request from %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (tests, benchmarks); `close` stops it."""
        self._serving = True  # so that a close() right away still stops the thread
        thread = threading.Thread(target=self.serve_forever, name="demo-http", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        if self._serving:
            self.shutdown()  # waits for serve_forever to return (it never started otherwise)
        self.server_close()
        if self.demo is not None:
            self.demo.close()


def make_server(
    pipe: Pipeline,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    batching: bool = True,
    batch_window_ms: float = 20.0,
    warmup: bool = False,
    **demo_kwargs: Any,
) -> DemoServer:
    """The demo over `pipe`, listening on host:port (0: any free port), not yet serving: call
    `serve_forever()` or `start()`. The port is bound first, so a taken one fails before the
    weights are read and the samplers compiled (warmup)."""
    server = DemoServer((host, port))
    try:
        server.demo = Demo(
            pipe, batching=batching, batch_window_ms=batch_window_ms, warmup=warmup, **demo_kwargs
        )
    except BaseException:
        server.server_close()
        raise
    return server
