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


# pytest-xdist hands out whole files (`make test`: --dist loadfile), with two changes that keep
# both workers busy to the end. Files that read the same trained smoke workdir (tests/cli/conftest)
# go to one worker as one unit: otherwise the second worker to ask waits, idle, while the first
# trains it (the joint smoke: about 2 minutes of one core). And the end-to-end files (tests/cli,
# up to minutes each) are handed out first, the many short files after them, where xdist would
# order files by their number of tests and leave a long end-to-end file running alone at the end.
SHARED_SMOKE = {
    "tests/cli/test_joint_cli.py": "configs/shapes_joint.py:smoke",
    "tests/cli/test_pipeline.py": "configs/shapes_joint.py:smoke",
    "tests/cli/test_serve.py": "configs/shapes_joint.py:smoke",
    "tests/cli/test_seeds.py": "configs/img2txt.py:smoke",
    "tests/cli/test_tasks_cli.py": "configs/img2txt.py:smoke",
}


def _hand_out_order(path: str) -> int:
    return 0 if path in SHARED_SMOKE else 1 if path.startswith("tests/cli/") else 2


def pytest_collection_modifyitems(items):
    # A stable sort: each file's tests keep their order (module fixtures stay shared).
    items.sort(key=lambda item: _hand_out_order(item.nodeid.split("::", 1)[0]))


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedSmokeScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SHARED_SMOKE.get(path, path)

    config.option.loadscopereorder = False  # the collection's order, as sorted above
    return SharedSmokeScheduling(config, log)
