"""Dynamic batching: concurrent requests that can share one model call are run as one batch.

A single worker thread serves a queue of jobs. It takes the oldest job, then waits up to
`window_s` for more jobs with the same batch key (up to `max_batch` of them), and makes ONE call
`run_batch(key, payloads)` for them, handing each job its own row through its Future. Jobs with
different keys are never mixed: they wait in the queue, in arrival order, for their own batch.

The wait ends early once the batch is as large as the last one and no request is on its way.
Callers mark each request's thread from its arrival to its `submit` (`with batcher.request():`,
as the demo's HTTP handlers do), so the worker knows when nobody else is about to join. One
person clicking (batches of one row) then never waits for the window; N clients under steady
load (batches of N rows) wait only until all N have come back, not the whole window; a batch
that the window closed short sets a smaller target for the next. Without such marks the window
is always waited in full.

Every model call happens on that one thread, so the JAX work of a server is never interleaved
between threads; the request threads parse and check requests and wait on futures.

Batching changes results: the sampling noise is drawn for the whole batch, so a request batched
with others may get another sample than alone for the same seed. Identical requests run in the
same batch composition (the same payloads at the same rows) get identical results.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("crossmodal_jax")

# (key, payloads) -> one result per payload, in order; a row that failed alone is its exception.
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]

# Jobs waiting at most: beyond it a request is refused at once (Busy) instead of queueing for
# minutes behind a flood of others.
DEFAULT_MAX_PENDING = 1024


class Busy(RuntimeError):
    """The queue is full (the server answers 503) or the batcher is closed."""


@dataclasses.dataclass
class _Job:
    key: Hashable | None  # None: a `call` job, run alone
    payload: Any
    future: Future


class Batcher:
    """Runs `run_batch` on one worker thread over batches of same-key jobs (see the module doc)."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        window_s: float = 0.02,
        batching: bool = True,
        max_pending: int = DEFAULT_MAX_PENDING,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.window_s = window_s
        self.batching = batching  # read by the worker for every batch: may be switched live
        self.max_pending = max_pending
        self.calls = 0  # run_batch calls made: fewer than jobs when batching merged some
        # Rows of the latest run_batch calls, in order (bounded: a server runs for days).
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0  # requests inside request() blocks not submitted yet
        self._tracks_requests = False  # whether anyone calls request(): else wait the window
        self._last_rows = 1  # rows of the last batch: the next one's target
        self._local = threading.local()
        self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------- submitting

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue one row under `key`; its Future holds the row's result or exception."""
        if key is None:
            raise ValueError("a batch key cannot be None")
        return self._put(_Job(key, payload, Future()))

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count the calling thread as a request on its way until its `submit` (or the block's
        end, if it never submits): a batch being gathered waits for requests on their way."""
        with self._cond:
            self._tracks_requests = True
            self._arriving += 1
            self._local.arriving = True
        try:
            yield
        finally:
            with self._cond:
                self._arrived()
                self._cond.notify_all()

    def _arrived(self) -> None:
        """The calling thread's request is no longer on its way (call with the lock held)."""
        if getattr(self._local, "arriving", False):
            self._local.arriving = False
            self._arriving -= 1

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` alone on the worker thread (start-up work that touches the model: loading,
        warming up), in queue order with the requests."""
        return self._put(_Job(None, fn, Future()))

    def _put(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._queue) >= self.max_pending:
                raise Busy(f"server busy: {len(self._queue)} requests waiting, try again")
            self._queue.append(job)
            self._arrived()
            self._cond.notify_all()
        return job.future

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop after the queued jobs; later submits raise Busy."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                first = self._queue.popleft()
            if first.key is None:
                self._run_call(first)
            else:
                self._run(first.key, self._gather(first))

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the same-key jobs queued within the window, up to max_batch."""
        batch = [first]
        if not self.batching or self.max_batch == 1:
            return batch
        deadline = time.monotonic() + self.window_s
        with self._cond:
            while True:
                # Take matching jobs in arrival order; the others keep their places.
                kept: collections.deque[_Job] = collections.deque()
                while self._queue:
                    job = self._queue.popleft()
                    if len(batch) < self.max_batch and job.key == first.key:
                        batch.append(job)
                    else:
                        kept.append(job)
                self._queue = kept
                left = deadline - time.monotonic()
                # As many rows as last time and nobody on the way: waiting longer would idle.
                enough = (
                    self._tracks_requests and self._arriving == 0 and len(batch) >= self._last_rows
                )
                if len(batch) >= self.max_batch or left <= 0 or self._closed or enough:
                    return batch
                self._cond.wait(left)

    def _run(self, key: Hashable, batch: list[_Job]) -> None:
        jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.calls += 1
        self.batch_sizes.append(len(jobs))
        self._last_rows = len(jobs)
        try:
            results = list(self.run_batch(key, [j.payload for j in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} rows for {len(jobs)}")
        except Exception as e:  # the whole batch failed: every request hears why
            for job in jobs:
                job.future.set_exception(e)
            return
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    @staticmethod
    def _run_call(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.payload())
        except Exception as e:
            job.future.set_exception(e)
