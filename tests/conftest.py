"""Test setup: 8 fake CPU devices so sharding tests run anywhere.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os

# The suite is mostly XLA:CPU compilation; the tests assert behaviour, not speed. LLVM at -O0 makes
# it ~40 % faster (a sharded adversarial step test 29 s -> 18 s, a shapes_t2i smoke run 59 s ->
# 48 s); XLA's older loop fusion emitters instead of the MLIR ones a further ~28 % (a
# vqdit_img:smoke run with no cache, median of 3: 43.5 s -> 31.3 s); both measured alone on 2
# cores. CLI subprocesses get the same flags (tests/cli/cli_helpers.subprocess_env).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
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
