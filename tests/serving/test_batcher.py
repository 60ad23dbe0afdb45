"""serving/batcher.py alone: same-key requests merged into one call on the one worker thread,
never mixed across keys, batching switched off live, and the wait that ends once no request is on
its way."""

import threading
import time

import pytest

from crossmodal_jax.serving import Batcher


def test_batcher_merges_same_key_requests_only():
    rows, threads = [], set()

    def run(key, payloads):
        threads.add(threading.get_ident())
        rows.append((key, list(payloads)))
        return [ValueError(p) if p == "bad" else (key, p) for p in payloads]

    batcher = Batcher(run, max_batch=3, window_s=0.05)
    try:
        gate = threading.Event()
        held = batcher.call(gate.wait)  # hold the worker while requests queue up
        keys = ["a", "b", "a", "a", "b", "a", "a"]
        futures = [batcher.submit(k, i) for i, k in enumerate(keys)]
        bad = batcher.submit("b", "bad")
        gate.set()
        assert held.result() is True
        assert [f.result() for f in futures] == [(k, i) for i, k in enumerate(keys)]
        with pytest.raises(ValueError, match="bad"):
            bad.result()  # a row that failed alone fails its own request only
        # Arrival order between batches, same keys together, at most max_batch rows a call.
        assert rows == [("a", [0, 2, 3]), ("b", [1, 4, "bad"]), ("a", [5, 6])]
        assert batcher.calls == 3 and list(batcher.batch_sizes) == [3, 3, 2]
        assert threads == {batcher._thread.ident}  # every call on the one worker thread

        batcher.batching = False  # each request alone
        gate.clear()
        held = batcher.call(gate.wait)
        futures = [batcher.submit("a", i) for i in range(3)]
        gate.set()
        assert [f.result() for f in futures] == [("a", i) for i in range(3)]
        assert list(batcher.batch_sizes)[-3:] == [1, 1, 1]
    finally:
        batcher.close()


def test_batcher_waits_for_requests_on_their_way_only():
    batcher = Batcher(lambda key, payloads: list(payloads), max_batch=8, window_s=30.0)
    try:
        start = time.monotonic()
        with batcher.request():  # a user alone: no 30 s window
            assert batcher.submit("a", 1).result(timeout=10) == 1
        assert time.monotonic() - start < 5

        on_its_way, go = threading.Event(), threading.Event()

        def second():
            with batcher.request():
                on_its_way.set()
                go.wait()
                assert batcher.submit("a", 2).result(timeout=10) == 2

        thread = threading.Thread(target=second)
        thread.start()
        on_its_way.wait()
        with batcher.request():
            first = batcher.submit("a", 1)
            time.sleep(0.2)  # the worker waits for the request on its way ...
            go.set()
            assert first.result(timeout=10) == 1
        thread.join()
        assert list(batcher.batch_sizes) == [1, 2]  # ... which joins the batch
    finally:
        batcher.close()
