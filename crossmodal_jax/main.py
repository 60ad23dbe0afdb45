"""Train every stage a config names, resuming from the workdir.

  python -m crossmodal_jax.main --config=configs/vqdit_img.py --workdir=runs/vqdit_img
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:smoke --workdir=/tmp/smoke \
      --config.generator.train.steps=20

Multi-process (TPU pods, SLURM, or `launch/local_multiprocess.sh`): pass --coordinator_address,
--num_processes and --process_id, or let `jax.distributed.initialize()` read them from the environment.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from crossmodal_jax.errors import UserError, exit_alone, fail, last_line, one_line
from crossmodal_jax.logs.writers import quiet_library_logs
from crossmodal_jax.training.guards import Preempted


def available_configs() -> str:
    """The config files shipped in `configs/` (of the working directory, else of the checkout)."""
    for root in (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs"):
        if root.is_dir():
            names = sorted(f"configs/{p.name}" for p in root.glob("*.py") if p.name[0] != "_")
            return ", ".join(names) or "none"
    return "none found in ./configs"


_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file[:variant], e.g. configs/vqdit_img.py or configs/img2txt.py:smoke; available: "
    + available_configs(),
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with settings from the environment."
)


def _config_error(e: BaseException, argv: list[str]) -> str:
    """One line for a config that fails to load or an override naming a field that does not exist."""
    if isinstance(e, KeyError | AttributeError) and e.args:
        # ml_collections nests reprs ("'\\'trian\\'\\nDid you mean ..."): pull out the names.
        text = str(e.args[0]).replace("\\\\", "\\").replace("\\n", "\n")
        names = re.findall(r"[A-Za-z_]\w*", text.splitlines()[0]) if text.strip() else []
        bad = names[0] if names else ""
        keys = [a.split("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")]
        key = next((k for k in keys if bad in k.split(".")), bad)
        hint = re.search(r'[Dd]id you mean "(\w+)"', text)
        if not hint:
            return f"unknown config key {key!r}"
        fixed = ".".join(hint[1] if part == bad else part for part in key.split("."))
        return f"unknown config key {key!r}; did you mean {fixed!r}?"
    return f"bad --config: {last_line(e)}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad config path or override key is one line, not a traceback."""
    try:
        rest = flags.FLAGS(argv)
        if _CONFIG.value is None:
            fail(f"--config is required; available: {available_configs()}")
        _CONFIG.value.keys()  # config files load lazily: surface their errors here
        return rest
    except flags.UnrecognizedFlagError as e:
        name = getattr(e, "flagname", "") or ""
        if name.startswith("config."):
            fail(f"unknown config key {name[len('config.') :]!r} (see the config file's fields)")
        fail(one_line(e))
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        fail(_config_error(e, argv))
    return []


def start(config: ml_collections.ConfigDict) -> None:
    """Once per process, before the first run: quiet library logs, join the other processes
    (multi-process flags or environment), turn on the persistent compilation cache."""
    quiet_library_logs()
    from crossmodal_jax import processes
    from crossmodal_jax.training import compile_cache

    processes.start(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    compile_cache.enable(config.compilation_cache_dir)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """One run of `config` in `workdir` (joint or single-task); a UserError or a failure in a
    multi-process run ends the program with one line, a preemption with exit code 0."""
    import jax

    from crossmodal_jax import joint_run, run

    runner = joint_run.run if joint_run.is_joint(config) else run.run
    try:
        return runner(config, workdir)
    except Preempted as e:  # every process stops at the same step: a clean shutdown
        logging.getLogger("crossmodal_jax").info("%s", e)
        sys.exit(0)
    except Exception as e:
        if jax.process_count() > 1:
            exit_alone(e)
        if isinstance(e, UserError):
            fail(str(e))
        raise


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or not _WORKDIR.value:
        fail("both --config=configs/<task>.py and --workdir=DIR are required")
    start(_CONFIG.value)
    train(_CONFIG.value, _WORKDIR.value)


def run_main() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run_main()
