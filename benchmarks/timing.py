"""Side-by-side timing shared by the benchmarks that race two implementations on this machine.

Machines here are shared and noisy, so the implementations run alternately, one call of each per
repeat, after a warm-up (compilation, allocator, thread pools), and each is summarised by its
median.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import jax


def alternating_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, float]:
    """{name: median milliseconds of one blocking call}, the calls alternating name by name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # alternate so machine load affects both alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def environment() -> dict:
    """Versions and threads that a JSON result line records beside its numbers."""
    import torch

    return {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
