"""What every launcher does first: logging and (optionally) multi-host set-up."""
import logging
import os

import jax
from absl import flags
from absl import logging as absl_logging

_COORD = flags.DEFINE_string("coordinator_address", os.environ.get("MDD_COORDINATOR"),
                             "host:port of process 0 for multi-process runs (or $MDD_COORDINATOR).")
_NPROC = flags.DEFINE_integer("num_processes", int(os.environ.get("MDD_NUM_PROCESSES", "1")),
                              "Number of processes (or $MDD_NUM_PROCESSES).")
_PID = flags.DEFINE_integer("process_id", int(os.environ.get("MDD_PROCESS_ID", "0")),
                            "This process's id (or $MDD_PROCESS_ID).")


def setup(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; all options are --flags")
  # Our progress lines at INFO; the libraries' (Orbax logs every file it
  # writes) only from WARNING up.
  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger("mixture_dd")
  ours.setLevel(logging.INFO)
  if not ours.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.propagate = False
  if _NPROC.value < 1 or not 0 <= _PID.value < _NPROC.value:
    raise ValueError(f"--num_processes={_NPROC.value} and --process_id={_PID.value}: need "
                     "num_processes >= 1 and 0 <= process_id < num_processes")
  if _NPROC.value > 1:
    if not _COORD.value:
      raise ValueError("--num_processes > 1 needs --coordinator_address=host:port")
    if jax.default_backend() == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
