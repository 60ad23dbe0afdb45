"""JAX's persistent compilation cache for runs and the sample CLI (config `compilation_cache_dir`).

A run restarted, resumed or sampled from compiles the same programs again; with the cache, XLA
reads them back from disk instead (jax writes each entry whole, so several processes of one run,
or several runs, may share the folder). JAX_COMPILATION_CACHE_DIR in the environment wins over the
config: the test suite gives every session a fresh cache of its own (tests/conftest.py).
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("crossmodal_jax")

ENV = "JAX_COMPILATION_CACHE_DIR"


def enable(path: str) -> str:
    """Use the persistent compilation cache at `path` ("~" expanded; "" = none); returns the
    folder in use ("" when off). Call before the first compilation."""
    if os.environ.get(ENV):
        return os.environ[ENV]  # jax reads it itself
    if not path:
        return ""
    folder = os.path.expanduser(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # a read-only home: compile without a cache rather than fail
        log.warning("compilation cache %s not usable (%s); compiling without one", folder, e)
        return ""
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
