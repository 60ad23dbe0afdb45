"""The task mixture (data/mixture.py): whole rows per task, every task's own stream, exact resume
through grain's checkpoint handler, and one-line errors."""

import numpy as np
import orbax.checkpoint as ocp
import pytest
from grain import checkpoint as grain_checkpoint

from crossmodal_jax.data import mixture, pipeline


def records(task_offset: int, n: int, width: int) -> list[dict]:
    """Records whose `x` names them uniquely (task_offset * 1000 + index); each task has its own
    layout (`v` of `width` values)."""
    return [
        {"x": np.int32(task_offset * 1000 + i), "v": np.full((width,), i, np.float32)}
        for i in range(n)
    ]


SOURCES = {"t2i": records(1, 50, 2), "i2t": records(2, 30, 3), "s2t": records(3, 20, 5)}
WEIGHTS = {"t2i": 2.0, "i2t": 1.0, "s2t": 1.0}


def make(batch=16, seed=0):
    rows = mixture.task_rows(batch, WEIGHTS)
    return mixture.MixtureIterator(
        {
            name: pipeline.make_train_iterator(
                SOURCES[name], global_batch_size=rows[name], seed=seed + i, transform=None
            )
            for i, name in enumerate(sorted(SOURCES))
        }
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def test_rows_follow_the_weights_exactly():
    assert mixture.task_rows(16, WEIGHTS) == {"i2t": 4, "s2t": 4, "t2i": 8}
    assert mixture.task_rows(128, dict(a=48, b=40, c=20, d=20)) == dict(a=48, b=40, c=20, d=20)


def test_every_step_holds_each_tasks_rows_in_its_own_layout():
    for batch in take(make(), 20):
        assert sorted(batch) == ["i2t/v", "i2t/x", "s2t/v", "s2t/x", "t2i/v", "t2i/x"]
        for name, rows, width in (("t2i", 8, 2), ("i2t", 4, 3), ("s2t", 4, 5)):
            own = mixture.task_batch(batch, name)
            assert sorted(own) == ["v", "x"]
            assert own["v"].shape == (rows, width)
            assert np.all(own["x"] // 1000 == {"t2i": 1, "i2t": 2, "s2t": 3}[name])


def test_each_task_is_a_fresh_permutation_every_epoch():
    seen = {name: [] for name in SOURCES}
    for batch in take(make(), 25):  # 200 t2i rows (4 epochs), 100 i2t, 100 s2t (5 epochs)
        for name in SOURCES:
            seen[name] += list(mixture.task_batch(batch, name)["x"] % 1000)
    for name, rows in seen.items():
        n = len(SOURCES[name])
        epochs = [rows[i : i + n] for i in range(0, len(rows) - n + 1, n)]
        for epoch in epochs:
            assert sorted(epoch) == list(range(n))
        assert any(a != b for a, b in zip(epochs, epochs[1:], strict=False))


def test_the_saved_state_resumes_every_task_exactly(tmp_path):
    it = make()
    take(it, 7)
    with ocp.Checkpointer(grain_checkpoint.CheckpointHandler()) as ckpt:
        ckpt.save(tmp_path / "data", args=grain_checkpoint.CheckpointSave(it))
        expected = take(it, 5)
        again = make()  # a fresh run: restored through grain's handler, as the loop does
        ckpt.restore(tmp_path / "data", args=grain_checkpoint.CheckpointRestore(again))
    for a, b in zip(expected, take(again, 5), strict=True):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_state_of_other_tasks_is_refused():
    state = make().get_state()
    other = mixture.MixtureIterator({"t2i": iter([])})
    with pytest.raises(ValueError, match=r"holds tasks \['i2t', 's2t', 't2i'\], this run has"):
        other.set_state(state)


@pytest.mark.parametrize(
    "batch, weights, message",
    [
        (16, {}, "at least one task"),
        (16, {"a": 1.0, "b": 0.0}, "weight of task 'b' must be > 0"),
        (16, {"a": 1.0, "b": 2.0}, "into 5.33333 rows of task 'a'"),
        (64, {"a": 48, "b": 40}, "into 34.9091 rows of task 'a'"),
    ],
)
def test_mixtures_that_do_not_split_the_batch_are_one_line(batch, weights, message):
    with pytest.raises(ValueError, match=message) as e:
        mixture.task_rows(batch, weights)
    assert "\n" not in str(e.value)
