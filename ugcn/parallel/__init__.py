"""Scale out: the same compiled programs over every device of a machine (a ``batch`` mesh axis) and over
several hosts (``jax.distributed``, one slice of the inputs per process)."""
from ugcn.parallel.distributed import (
    DistributedSettings,
    barrier,
    distributed_settings,
    initialize_distributed,
    process_slice,
)
from ugcn.parallel.mesh import (
    BATCH_AXIS,
    batch_sharding,
    describe,
    device_mesh,
    mesh_size,
    pad_batch,
    padded_size,
    resolve_mesh,
    run_sharded,
    shard_batch,
    shard_map_batch,
    unpad,
)

__all__ = [
    "DistributedSettings", "barrier", "distributed_settings", "initialize_distributed", "process_slice",
    "BATCH_AXIS", "batch_sharding", "describe", "device_mesh", "mesh_size", "pad_batch", "padded_size",
    "resolve_mesh", "run_sharded", "shard_batch", "shard_map_batch", "unpad",
]
