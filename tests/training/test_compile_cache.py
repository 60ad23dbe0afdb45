"""The persistent compilation cache of runs (`compilation_cache_dir`): compiled programs land in the
configured folder, "" turns it off, and JAX_COMPILATION_CACHE_DIR (the suite's own) wins."""

import os
import subprocess
import sys

from crossmodal_jax.training import compile_cache

SCRIPT = """
import sys
import jax, jax.numpy as jnp
from crossmodal_jax.training import compile_cache
folder = compile_cache.enable(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(folder, float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.arange(3.0))))
"""


def test_programs_are_cached_in_the_configured_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    folder = tmp_path / "cache" / "xla"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == str(folder)
    assert any(folder.iterdir())  # at least one compiled program written


def test_off_and_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.enable("") == ""
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
    assert compile_cache.enable("~/elsewhere") == str(tmp_path)
    assert not os.path.exists(os.path.expanduser("~/elsewhere"))
