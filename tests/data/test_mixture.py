"""The task mixture (data/mixture.py): proportions, epochs, exact resume, process sharding and
one-line errors."""

import jax
import numpy as np
import pytest

from crossmodal_jax.data import mixture


def records(task_offset: int, n: int) -> list[dict]:
    """Records whose `x` names them uniquely: task_offset * 1000 + index."""
    return [
        {"x": np.int32(task_offset * 1000 + i), "v": np.full((2,), i, np.float32)} for i in range(n)
    ]


SOURCES = {"t2i": records(1, 50), "i2t": records(2, 30), "s2t": records(3, 20)}
WEIGHTS = {"t2i": 2.0, "i2t": 1.0, "s2t": 1.0}


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_mix_the_tasks_in_the_proportions_of_the_weights():
    it = mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=16, seed=0)
    ids = mixture.task_ids(WEIGHTS)
    counts = sum(np.bincount(b["task"], minlength=3) for b in take(it, 50))
    assert counts.sum() == 800
    np.testing.assert_allclose(counts[ids["t2i"]] / 800, 0.5, atol=0.01)
    np.testing.assert_allclose(counts[ids["i2t"]] / 800, 0.25, atol=0.01)
    np.testing.assert_allclose(counts[ids["s2t"]] / 800, 0.25, atol=0.01)


def test_each_task_is_a_fresh_permutation_every_epoch_and_rows_keep_their_task():
    it = mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=16, seed=0)
    ids = mixture.task_ids(WEIGHTS)
    seen = {name: [] for name in WEIGHTS}
    for batch in take(it, 50):
        for x, task in zip(batch["x"], batch["task"], strict=True):
            name = next(n for n, i in ids.items() if i == task)
            assert x // 1000 == {"t2i": 1, "i2t": 2, "s2t": 3}[name]  # the row is its task's
            seen[name].append(int(x))
    for name, xs in seen.items():
        n = len(SOURCES[name])
        first, second = xs[:n], xs[n : 2 * n]
        assert sorted(first) == sorted(second) == sorted(int(r["x"]) for r in SOURCES[name])
        assert first != second  # reshuffled


def test_the_saved_state_resumes_every_task_where_it_was():
    it = mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=8, seed=3)
    take(it, 7)
    state = it.get_state()
    expected = take(it, 5)
    again = mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=8, seed=3)
    again.set_state(state)
    for a, b in zip(take(again, 5), expected, strict=True):
        for key in ("x", "v", "task"):
            np.testing.assert_array_equal(a[key], b[key])


def test_processes_take_whole_local_batches_of_one_global_stream(monkeypatch):
    one = take(mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=8, seed=1), 4)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts = []
    for p in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        it = mixture.make_mixture_iterator(SOURCES, WEIGHTS, global_batch_size=8, seed=1)
        parts.append(take(it, 2))
    # The 1-process stream of 4-row local halves: batch s of process p is local batch 2s + p.
    halves = [b["x"][i : i + 4] for b in one for i in (0, 4)]
    for s in range(2):
        for p in (0, 1):
            np.testing.assert_array_equal(parts[p][s]["x"], halves[2 * s + p])


def test_a_task_left_out_of_the_weights_is_not_drawn():
    weights = {"t2i": 1.0, "s2t": 1.0}
    it = mixture.make_mixture_iterator(SOURCES, weights, global_batch_size=8, seed=0)
    xs = np.concatenate([b["x"] for b in take(it, 10)])
    assert not np.any(xs // 1000 == 2)


@pytest.mark.parametrize(
    "sources, weights, message",
    [
        (
            SOURCES,
            {"t2i": 1.0, "v2t": 1.0},
            "mixture weights name task 'v2t', which has no records",
        ),
        (SOURCES, {"t2i": 1.0, "i2t": 0.0}, "mixture weight of task 'i2t' must be > 0, got 0.0"),
        (SOURCES, {}, "a mixture needs at least one task with a weight"),
        ({"a": records(1, 4), "b": []}, {"a": 1, "b": 1}, "task 'b' of the mixture has no records"),
        (
            {"a": records(1, 4), "b": [{"x": np.int32(0), "v": np.zeros(3, np.float32)}]},
            {"a": 1, "b": 1},
            "records of task 'b' differ from those of 'a' in 'v' (((3,), '<f4') against "
            "((2,), '<f4')): pad every task's records to one layout",
        ),
    ],
)
def test_a_mixture_that_cannot_be_drawn_is_one_line(sources, weights, message):
    with pytest.raises(ValueError) as e:
        mixture.make_mixture_iterator(sources, weights, global_batch_size=4, seed=0)
    assert str(e.value) == message
