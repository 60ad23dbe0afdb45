"""Metrics over seeds (evaluation/seed_summary.py): the statistics, the seed list, the seeded config."""

import ml_collections
import numpy as np
import pytest

from configs import shapes_joint
from crossmodal_jax.evaluation import seed_summary


def test_summarize_is_mean_sample_std_min_max_per_metric():
    per_seed = {
        2: {"novel_exact_match": 0.80, "test_wer": 0.02, "note": "x", "only_here": 1.0},
        0: {"novel_exact_match": 0.90, "test_wer": 0.01, "note": "y"},
        1: {"novel_exact_match": 0.70, "test_wer": float("nan"), "note": "z"},
    }
    summary = seed_summary.summarize(per_seed)
    # Only metrics every seed has, numeric and finite in every seed.
    assert set(summary) == {"novel_exact_match"}
    got = summary["novel_exact_match"]
    assert got["values"] == [0.90, 0.70, 0.80]  # in seed order
    np.testing.assert_allclose(got["mean"], 0.8)
    np.testing.assert_allclose(got["std"], 0.1)  # ddof=1: sqrt((0.01 + 0.01 + 0) / 2)
    assert (got["min"], got["max"]) == (0.70, 0.90)
    assert seed_summary.summarize({5: {"a": 3}})["a"] == dict(
        mean=3.0, std=0.0, min=3.0, max=3.0, values=[3.0]
    )


def test_headline_selection_and_table():
    summary = seed_summary.summarize(
        {
            0: {"test_exact_match": 1.0, "test_bleu": 50.0, "image2text/novel_wer": 0.1},
            1: {"test_exact_match": 0.5, "test_bleu": 60.0, "image2text/novel_wer": 0.3},
        }
    )
    keys = seed_summary.select(summary, seed_summary.HEADLINE)
    assert keys == ["image2text/novel_wer", "test_exact_match"]
    table = seed_summary.table(summary, [0, 1], seed_summary.HEADLINE).splitlines()
    assert table[0] == "| metric | mean ± std | min | max | seed 0 | seed 1 |"
    assert table[3] == "| test_exact_match | 0.75 ± 0.3536 | 0.5 | 1 | 1 | 0.5 |"
    assert len(table) == 4


@pytest.mark.parametrize(
    "text, seeds",
    [("3", [0, 1, 2]), ("1", [0]), ("0,4,7", [0, 4, 7]), (" 5 ,", [5]), ("5,", [5])],
)
def test_parse_seeds(text, seeds):
    assert seed_summary.parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, words",
    [("", "a count"), ("a", "a count"), ("0", "at least 1"), ("2,2", "distinct"), ("1,-1", ">= 0")],
)
def test_parse_seeds_refuses(text, words):
    with pytest.raises(ValueError, match=words):
        seed_summary.parse_seeds(text)


def test_seeded_sets_every_seed_and_leaves_the_config_alone():
    config = shapes_joint.get_config("smoke")
    config.lock()
    out = seed_summary.seeded(config, 7)
    assert out.seed == 7 and all(out.tasks[t].seed == 7 for t in out.tasks)
    assert config.seed == 0 and all(config.tasks[t].seed == 0 for t in config.tasks)
    config = ml_collections.ConfigDict(dict(seed=0, x=1, s=dict(t="runs/a/seed_{seed}", u="{x}")))
    assert seed_summary.seeded(config, 3).to_dict() == dict(
        seed=3, x=1, s=dict(t="runs/a/seed_3", u="{x}")
    )
    assert config.s.t == "runs/a/seed_{seed}"
