"""The mesh of all devices of all hosts and the step sharded over it.

The batch is split along "data"; parameters and optimizer state are
replicated (XLA inserts the gradient all-reduce).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh():
  # Auto axes: XLA propagates the batch sharding through the model (jax's
  # default Explicit axes would ask for an out_sharding at every gather).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def shard_step(step_fn, mesh):
  """jit with the batch split over "data" and everything else replicated."""
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(
    step_fn, in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl), donate_argnums=(0,)
  )


def global_batch(mesh, local_batch: dict):
  """Per-process numpy batch -> one global array sharded over "data"."""
  sh = NamedSharding(mesh, P("data"))
  return {
    k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local_batch.items()
  }


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))
