"""Test setup: 8 fake CPU devices so sharding tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep test processes from oversubscribing the two CI cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for this test session, inherited by every `main`/`sample`
# subprocess: the suite starts many runs of the same smoke configs (resume, reliability, sample
# CLI), and each would otherwise recompile identical programs (a smoke run: 66 s cold, 19 s warm).
# A fresh directory per session, so every program is still compiled once per run of the suite.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="crossmodal-jax-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
