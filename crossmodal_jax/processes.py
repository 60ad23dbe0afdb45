"""How an entry point (`main`, `evaluate`) joins a multi-process job and logs: one place, so every
CLI starts processes and prefixes their log lines alike."""

from __future__ import annotations

import logging
import sys


def start(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    from_environment: bool = False,
) -> None:
    """`jax.distributed.initialize` when a coordinator is given (or `from_environment`: TPU
    metadata, SLURM), then INFO logs on stdout, each line marked with the process index."""
    import jax

    if coordinator_address or from_environment:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [p{jax.process_index()}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
