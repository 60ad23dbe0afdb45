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
