"""What every launcher does first: flags, logging and (optionally) multi-host set-up.

Multi-process runs (one process per host, or several on one machine):

  python -m launch.train --config=... --workdir=SHARED_DIR \
      --num_processes=2 --process_id=0 --coordinator_address=host0:12345
  (and the same with --process_id=1 on the other host)

Every process must see the same --workdir (a shared file system); each one
reads only its slice of every global batch.
"""

import logging
import os
import re
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mixture_dd import trainer

_COORD = flags.DEFINE_string(
  "coordinator_address",
  os.environ.get("MDD_COORDINATOR"),
  "host:port of process 0 for multi-process runs (or $MDD_COORDINATOR).",
)
_NPROC = flags.DEFINE_integer(
  "num_processes",
  int(os.environ.get("MDD_NUM_PROCESSES", "1")),
  "Number of processes (or $MDD_NUM_PROCESSES).",
)
_PID = flags.DEFINE_integer(
  "process_id",
  int(os.environ.get("MDD_PROCESS_ID", "0")),
  "This process's id (or $MDD_PROCESS_ID).",
)

_DEBUG = flags.DEFINE_bool(
  "debug",
  False,
  "Show the Python traceback of a user error "
  "(bad config field, missing workdir, wrong checkpoint).",
)

# Errors a user can fix from the command line: one line and exit status 2,
# not a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, trainer.NonFiniteError)
EXIT_USER_ERROR = 2


def define_config_flag(help_string: str, lock_config: bool = True):
  """`--config=FILE[:arg]` with `--config.a.b=value` overrides.

  Fields that default to None are `config_dict.placeholder`s in the config
  schema, so they take a typed value on the command line too.
  """
  return config_flags.DEFINE_config_file("config", None, help_string, lock_config=lock_config)


def run(main) -> None:
  """absl's app.run, with a launcher's exits: a preempted run exits with
  trainer.EXIT_PREEMPTED and the line to rerun; a user error prints one
  line (the traceback with --debug) and exits with EXIT_USER_ERROR."""

  def wrapped(argv):
    try:
      return main(argv)
    except trainer.Preempted as e:
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(trainer.EXIT_PREEMPTED)
    except USER_ERRORS as e:
      if _DEBUG.value:
        raise
      print(f"error: {e}  (rerun with --debug for the traceback)", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)

  app.run(wrapped)


def check_workdir(workdir: str) -> str:
  """The absolute --workdir, after checking it can be a directory."""
  if not workdir or not workdir.strip():
    raise ValueError("--workdir is empty; give a directory for checkpoints, logs and samples")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir={workdir!r} exists and is not a directory; choose another path")
  return path


def setup(argv):
  """Checks the launcher flags, sets up logging and (if asked) jax.distributed."""
  if len(argv) > 1:
    raise ValueError(
      f"unexpected arguments {argv[1:]}; all options are --flags "
      "(e.g. --config=configs/tiny.py --workdir=DIR)"
    )
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
  distributed_setup(_NPROC.value, _PID.value, _COORD.value)


def distributed_setup(num_processes: int, process_id: int, coordinator_address: str | None):
  """Validates the multi-process flags and calls jax.distributed.initialize.

  Must run before anything touches a JAX backend (jax.devices(), an array):
  jax.distributed.initialize refuses to run after that.
  """
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes}: must be >= 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(
      f"--process_id={process_id}: must be in [0, {num_processes}) for "
      f"--num_processes={num_processes}"
    )
  if num_processes == 1:
    return
  if not coordinator_address:
    raise ValueError(
      "--num_processes > 1 needs --coordinator_address=host:port (the address "
      "of process 0, the same for every process)"
    )
  if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", coordinator_address):
    raise ValueError(
      f"--coordinator_address={coordinator_address!r}: expected host:port, "
      "e.g. localhost:12345 or 10.0.0.1:12345"
    )
  # Only read by the CPU backend (gloo collectives across processes); set
  # before the backend starts, which asking jax.default_backend() would do.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
