"""Cold vs warm persistent compilation cache (`compilation_cache_dir`, training/compile_cache.py).

  python benchmarks/compile_cache.py [--config=configs/vqdit_img.py:smoke] [--root=/tmp/cc_bench]

Runs `python -m crossmodal_jax.main` three times with one new, empty cache folder: into a fresh
workdir (cold: every program compiled), into a second fresh workdir (warm: programs read back),
then again on the finished second workdir (restore and evaluate), and once more on it with the
cache off. Each run's wall time, and its seconds from start to the first logged training step.
The environment's JAX_COMPILATION_CACHE_DIR is removed so the config's folder is used. Runs one
after another on this machine: nothing else should run beside it. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "configs/vqdit_img.py:smoke", "Config[:variant] to run.")
_ROOT = flags.DEFINE_string("root", "/tmp/cc_bench", "Folder for the cache and workdirs (emptied).")


def _main_run(workdir: str, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cmd = [sys.executable, "-m", "crossmodal_jax.main", f"--config={_CONFIG.value}"]
    cmd += [f"--workdir={workdir}", f"--config.compilation_cache_dir={cache}"]
    start = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode:
        raise SystemExit(f"main failed: {out.stderr[-2000:]}")
    first = None  # the first progress line's clock time, HH:MM:SS
    for line in out.stdout.splitlines():
        if "steps/s" in line and (m := re.match(r"(\d\d):(\d\d):(\d\d)", line)):
            h, mi, s = map(int, m.groups())
            t0 = time.localtime(start)
            first = (h - t0.tm_hour) * 3600 + (mi - t0.tm_min) * 60 + s - t0.tm_sec
            break
    return {"wall_s": round(wall, 1), "first_step_s": first}


def main(argv) -> None:
    del argv
    root = _ROOT.value
    shutil.rmtree(root, ignore_errors=True)
    cache = os.path.join(root, "cache")
    runs = {
        "cold": _main_run(os.path.join(root, "w1"), cache),
        "warm": _main_run(os.path.join(root, "w2"), cache),
        "rerun_warm": _main_run(os.path.join(root, "w2"), cache),
        "rerun_no_cache": _main_run(os.path.join(root, "w2"), ""),
    }
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
    for name, r in runs.items():
        print(f"{name:>15}: wall {r['wall_s']} s, first logged step after {r['first_step_s']} s")
    print(json.dumps({"config": _CONFIG.value, "cache_bytes": size, **runs}))


if __name__ == "__main__":
    app.run(main)
