"""Reliability in-process: NaN/Inf handling, broken checkpoints, config checks, preemption flags,
and a scan of the package for anything that could unpickle user input."""

import ast
import json
import logging
import os
import pathlib
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vqdit_img
from crossmodal_jax import data
from crossmodal_jax.errors import UserError
from crossmodal_jax.training import sharding
from crossmodal_jax.training.checkpoint import StageCheckpointer
from crossmodal_jax.training.guards import NonFiniteLoss, PreemptionGuard
from crossmodal_jax.training.loop import fit
from crossmodal_jax.training.stage import RunContext, StageSpec
from crossmodal_jax.training.step import init_state, train_step


def _exploding_objective(params, model_state, batch, key):
    """-w pushes w up by ~lr a step (Adam); once w > 3.5 (the 4th step) the loss is NaN."""
    w = params["w"] + 0.0 * jnp.mean(batch["image"])
    loss = jnp.where(w > 3.5, jnp.nan, -w)
    return loss, (model_state, {})


def _toy_fit(tmp_path, **train_overrides):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    train_cfg = config.tokenizer.train
    train_cfg.update(
        steps=8,
        learning_rate=1.0,
        warmup_steps=0,
        end_lr_fraction=1.0,
        grad_clip=100.0,
        checkpoint_every=1,
        log_every=1,
        **train_overrides,
    )
    source = data.get_source("digits", "train", config.data.data_dir)
    spec = StageSpec(
        name="toy",
        train_cfg=train_cfg,
        init_variables=lambda key: {"params": {"w": jnp.ones(())}},
        objective=_exploding_objective,
        make_iterator=lambda: data.make_train_iterator(
            source,
            global_batch_size=16,
            seed=0,
            transform=data.ImageTextFeatures(config.data.text_max_len),
        ),
    )
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    ctx = RunContext(workdir=str(tmp_path / "run"), mesh=mesh, rules=sharding.DEFAULT_RULES, seed=0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(ctx.rules):
        return fit(spec, ctx, stage_index=0), os.path.join(ctx.workdir, "toy")


def test_nan_stops_the_run_naming_the_step_and_saves_nothing_bad(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 4 .*skip_nonfinite=True"):
        _toy_fit(tmp_path)
    saved = sorted(
        int(d) for d in os.listdir(os.path.join(tmp_path, "run/toy/checkpoints")) if d.isdigit()
    )
    assert saved == [1, 2, 3]


def test_skip_nonfinite_keeps_the_last_good_state_and_counts(tmp_path):
    state, stage_dir = _toy_fit(tmp_path, skip_nonfinite=True)
    assert int(state.step) == 8
    np.testing.assert_allclose(state.params["w"], 4.0, rtol=1e-5)  # frozen after step 3
    rows = [json.loads(line) for line in open(os.path.join(stage_dir, "metrics.jsonl"))]
    assert [r["skipped_updates"] for r in rows][-1] == 5


def test_train_step_skip_leaves_state_untouched_but_advances_step():
    tx = optax.sgd(0.1)
    state = init_state({"w": jnp.ones(3)}, {"c": jnp.zeros(())}, tx)
    nan_objective = lambda p, ms, b, k: (jnp.sum(p["w"]) * jnp.nan, ({"c": ms["c"] + 1}, {}))
    new, metrics = train_step(
        state,
        {},
        jax.random.key(0),
        objective=nan_objective,
        tx=tx,
        ema_decay=0.5,
        skip_nonfinite=True,
    )
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    jax.tree.map(
        np.testing.assert_array_equal,
        (new.params, new.model_state, new.ema_params),
        (state.params, state.model_state, state.ema_params),
    )


def _corrupt(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def test_broken_newest_checkpoint_falls_back_and_is_set_aside(tmp_path, caplog):
    directory = str(tmp_path / "stage" / "checkpoints")
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    ckpt.save(1, {"w": jnp.ones(4)}, force=True)
    ckpt.save(2, {"w": 2 * jnp.ones(4)}, force=True)
    ckpt.close()
    _corrupt(os.path.join(directory, "2"))
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    with caplog.at_level(logging.WARNING, logger="crossmodal_jax"):
        step, state = ckpt.restore(abstract)
    assert step == 1 and float(state["w"][0]) == 1.0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"checkpoint {os.path.join(directory, '2')} is unreadable")
    assert os.listdir(tmp_path / "stage" / "broken_checkpoints")[0].startswith("2-")
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, {"w": 3 * jnp.ones(4)}, force=True)  # the step can be written again
    ckpt.close()
    assert os.path.isdir(os.path.join(directory, "1"))  # the good one is never deleted


def test_empty_step_directory_is_skipped(tmp_path, caplog):
    directory = str(tmp_path / "stage" / "checkpoints")
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    ckpt.save(1, {"w": jnp.ones(2)}, force=True)
    ckpt.close()
    os.makedirs(os.path.join(directory, "5"))
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    assert ckpt.latest_step() == 5  # orbax lists the empty step as the newest (DESIGN 5)
    with caplog.at_level(logging.WARNING, logger="crossmodal_jax"):
        step, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    ckpt.close()
    assert step == 1
    assert any(os.path.join(directory, "5") in r.getMessage() for r in caplog.records)
    assert os.listdir(tmp_path / "stage" / "broken_checkpoints")[0].startswith("5-")


def test_no_restorable_step_stops_and_moves_nothing(tmp_path):
    """Every step failing (another code version's state, a lost file system) is not corruption:
    the run stops in one line instead of setting aside good checkpoints and starting over."""
    directory = str(tmp_path / "stage" / "checkpoints")
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    for step in (1, 2):
        ckpt.save(step, {"w": jnp.ones(4)}, force=True)
    ckpt.close()
    ckpt = StageCheckpointer(directory, keep=3, save_every=1)
    with pytest.raises(UserError) as info:
        ckpt.restore({"w": jax.ShapeDtypeStruct((5,), jnp.float32)})  # another shape
    ckpt.close()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"no checkpoint in {directory} can be restored (newest: step 2")
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert not os.path.exists(tmp_path / "stage" / "broken_checkpoints")


# --- preemption flag ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_guard_turns_the_signal_into_a_stop_request(sig):
    before = signal.getsignal(sig)
    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), sig)  # handled here: no exit, no KeyboardInterrupt
        assert guard.should_stop()
    assert signal.getsignal(sig) is before  # the previous handler is back


def test_preemption_is_agreed_by_every_process(monkeypatch):
    """With several processes the flags are all-gathered every step: one signalled process stops
    them all at the same step (the loop saves and exits on the step should_stop() turns True)."""
    from jax.experimental import multihost_utils

    gathered = []

    def allgather(x, other):
        gathered.append(int(x))
        return np.array([int(x), other], np.int32)

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    guard = PreemptionGuard()
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: allgather(x, 0))
    assert not guard.should_stop()
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: allgather(x, 1))
    assert guard.should_stop()  # only the other process was signalled
    guard._handle(signal.SIGTERM, None)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: allgather(x, 0))
    assert guard.should_stop()  # only this one
    assert gathered == [0, 0, 1]  # each process contributes its own flag


def test_only_process_0_reads_or_writes_the_mesh_note(tmp_path, monkeypatch):
    """Another process reading mesh.json while process 0 rewrites it once crashed on half a file
    (then hung its peer in a collective): it is process 0's alone, and written whole."""
    from crossmodal_jax.training.loop import record_mesh

    mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
    (tmp_path / "mesh.json").write_text('{"da')  # what a reader saw mid-write
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert record_mesh(str(tmp_path), mesh) is None
    assert (tmp_path / "mesh.json").read_text() == '{"da'
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert record_mesh(str(tmp_path), mesh) is None  # a half file is no previous mesh
    (tmp_path / "mesh.json").write_text('{"data": 4}')
    assert record_mesh(str(tmp_path), mesh) == {"data": 4}
    assert json.loads((tmp_path / "mesh.json").read_text())["data"] == 2
    assert os.listdir(tmp_path) == ["mesh.json"]  # no temporary file left


def test_a_json_file_is_written_whole_or_not_at_all(tmp_path):
    from crossmodal_jax.logs.writers import write_json

    path = str(tmp_path / "metrics.json")
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # fails half-way through json.dump
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


@pytest.mark.parametrize("error, code", [(UserError("bad value x"), 2), (RuntimeError("bug"), 1)])
def test_a_failing_process_of_a_multi_process_run_exits_at_once(monkeypatch, capsys, error, code):
    """Not through jax.distributed's shutdown barrier, where it would wait 5 minutes for peers
    that wait in its next collective; a user error is still one line."""
    from crossmodal_jax.errors import exit_alone

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    try:
        raise error
    except Exception as e:
        exit_alone(e)
    err = capsys.readouterr().err
    assert exits == [code]
    if code == 2:
        assert err == "error: bad value x\n"
    else:
        assert "Traceback" in err and "RuntimeError: bug" in err


# --- untrusted input ------------------------------------------------------------------------------

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "crossmodal_jax"
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "<absent>"


def test_nothing_in_the_package_can_unpickle_user_input():
    """np.load only with allow_pickle=False, torch.load only with weights_only=True, no pickle-
    family module, no yaml.load, no pandas.read_pickle anywhere in crossmodal_jax/."""
    problems, loads = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in UNPICKLING_MODULES for n in names):
                    problems.append(f"{where}: imports {names}")
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            owner = owner.id if isinstance(owner, ast.Name) else ast.unparse(owner)
            call = f"{owner}.{node.func.attr}"
            if call in ("np.load", "numpy.load", "jnp.load"):
                loads += 1
                if _keyword(node, "allow_pickle") is not False:
                    problems.append(f"{where}: {call} without allow_pickle=False")
            elif call == "torch.load":
                loads += 1
                if _keyword(node, "weights_only") is not True:
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif call in ("yaml.load", "yaml.unsafe_load", "pd.read_pickle", "pandas.read_pickle"):
                problems.append(f"{where}: {call}")
    assert problems == [], "\n".join(problems)
    assert loads >= 2  # the scan sees data/files.py's np.load and torch_convert.py's torch.load
