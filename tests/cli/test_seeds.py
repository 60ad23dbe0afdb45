"""The seeds command end to end: a smoke config over 2 seeds, the first one read from the suite's
trained smoke workdir (a finished seed is not retrained), the second trained; the summary's
statistics against the seeds' own metrics.json; bad --seeds in one line with nothing written."""

import json
import os
import shutil

import numpy as np
from cli_helpers import read_jsonl, run_cli

CONFIG = "configs/img2txt.py:smoke"


def test_seeds_trains_each_seed_and_summarises(smoke_workdir, tmp_path):
    trained, flags, _ = smoke_workdir(CONFIG)
    workdir = tmp_path / "seeds"
    shutil.copytree(trained, workdir / "seed_0")
    before = os.path.getmtime(workdir / "seed_0" / "metrics.json")
    common = [f for f in flags if not f.startswith("--workdir")] + [f"--workdir={workdir}"]

    result = run_cli("seeds", *common, "--seeds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"seed 0 (1/2) in {workdir / 'seed_0'}: finished: read" in result.stderr
    assert f"seed 1 (2/2) in {workdir / 'seed_1'}: training" in result.stderr
    assert os.path.getmtime(workdir / "seed_0" / "metrics.json") == before

    per_seed = []
    for seed in (0, 1):
        with open(workdir / f"seed_{seed}" / "config.json") as f:
            assert json.load(f)["seed"] == seed
        with open(workdir / f"seed_{seed}" / "metrics.json") as f:
            per_seed.append(json.load(f))
    # The seed reached both stages: their logged losses differ (the generator's first one is the
    # same, log(vocab): adaLN-Zero's zero output layer gives uniform logits at any seed).
    for stage in ("tokenizer", "generator"):
        losses = [
            [
                r["loss"]
                for r in read_jsonl(workdir / f"seed_{s}/{stage}/metrics.jsonl")
                if "loss" in r
            ]
            for s in (0, 1)
        ]
        assert len(losses[0]) == len(losses[1]) > 1 and losses[0] != losses[1], stage

    with open(workdir / "seeds.json") as f:
        summary = json.load(f)
    assert summary["seeds"] == [0, 1]
    for key in ("test_exact_match", "test_wer", "test_bleu"):
        values = [m[key] for m in per_seed]
        got = summary["metrics"][key]
        assert got["values"] == values
        np.testing.assert_allclose(got["mean"], np.mean(values), rtol=1e-12)
        np.testing.assert_allclose(got["std"], abs(values[0] - values[1]) / np.sqrt(2), atol=1e-12)
        assert got["min"] == min(values) and got["max"] == max(values)

    lines = result.stdout.strip().splitlines()  # the runs' logs, then the table, then the JSON line
    assert "| metric | mean ± std | min | max | seed 0 | seed 1 |" in lines
    assert any(line.startswith("| test_exact_match |") for line in lines)
    last = json.loads(lines[-1])
    assert last["seeds"] == [0, 1] and "test_bleu" not in last  # the table's metrics only
    assert last["test_wer"]["mean"] == summary["metrics"]["test_wer"]["mean"]

    # Run again: both seeds are read, nothing trains.
    again = run_cli("seeds", *common, "--seeds=2", "--metrics=*_bleu")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished: read") == 2 and ": training" not in again.stderr
    keys = set(json.loads(again.stdout.strip().splitlines()[-1])) - {"seeds"}
    assert "test_bleu" in keys and all(k.endswith("_bleu") for k in keys)


def test_bad_seeds_is_one_line_and_writes_nothing(tmp_path):
    # Every refused form is in tests/evaluation/test_seed_summary.py; here, how the CLI says it.
    workdir = tmp_path / "w"
    result = run_cli("seeds", f"--config={CONFIG}", f"--workdir={workdir}", "--seeds=0,x")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --seeds='0,x': a count (3) or a comma list of integers (0,4,7)"]
    assert not workdir.exists()
