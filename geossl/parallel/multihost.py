"""Multi-process helpers: distributed initialisation and global batch assembly."""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from geossl.parallel.mesh import batch_sharding


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> None:
    """Calls ``jax.distributed.initialize`` when asked (explicit flags) or when ``auto`` and a
    cluster environment is detected (TPU pod, SLURM, Open MPI). On CPU the gloo collectives are
    selected so that several host processes can run one program."""
    explicit = bool(coordinator_address)
    detected = auto and any(v in os.environ for v in (
        "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))
    if not (explicit or detected):
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def global_batch(local_batch: dict, mesh) -> dict:
    """Process-local numpy batch (leading axis = this process's rows) → global jax arrays sharded
    over ("data", "fsdp"). Process p's rows land at global rows [p·b, (p+1)·b)."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return jax.tree_util.tree_map(one, local_batch)
