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

import jax
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_dict
from ml_collections import config_flags

_COORD = flags.DEFINE_string("coordinator_address", os.environ.get("MDD_COORDINATOR"),
                             "host:port of process 0 for multi-process runs (or $MDD_COORDINATOR).")
_NPROC = flags.DEFINE_integer("num_processes", int(os.environ.get("MDD_NUM_PROCESSES", "1")),
                              "Number of processes (or $MDD_NUM_PROCESSES).")
_PID = flags.DEFINE_integer("process_id", int(os.environ.get("MDD_PROCESS_ID", "0")),
                            "This process's id (or $MDD_PROCESS_ID).")

# Config fields whose default is None but which take a value on the command
# line: ml_collections cannot override a None field (it does not know its
# type), so the launchers give these a type before the overrides apply.
NONE_FIELD_TYPES = {
    "data.data_dir": str,
    "teacher.workdir": str,
    "process.vocab_size": int,
    "model.length": int,
}


class _TypedNoneParser(flags.ArgumentParser):
  """Wraps the config-file parser: loads the file, then gives the None fields
  of NONE_FIELD_TYPES a type (and locks the config if asked)."""

  def __init__(self, inner, lock_config: bool):
    self._inner = inner
    self._lock = lock_config

  def parse(self, argument):
    config = self._inner.parse(argument)
    if isinstance(config, config_dict.ConfigDict):
      for dotted, typ in NONE_FIELD_TYPES.items():
        section, field = dotted.split(".")
        sec = config.get(section)
        if isinstance(sec, config_dict.ConfigDict) and field in sec and sec[field] is None:
          sec[field] = config_dict.placeholder(typ)
      if self._lock:
        config.lock()
    return config

  def flag_type(self):
    return self._inner.flag_type()


def define_config_flag(help_string: str, lock_config: bool = True):
  """`--config=FILE[:arg]` with `--config.a.b=value` overrides (None fields too)."""
  holder = config_flags.DEFINE_config_file("config", None, help_string, lock_config=False)
  flag = flags.FLAGS["config"]
  flag.parser = _TypedNoneParser(flag.parser, lock_config)
  return holder


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
    raise ValueError(f"unexpected arguments {argv[1:]}; all options are --flags "
                     "(e.g. --config=configs/tiny.py --workdir=DIR)")
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
    raise ValueError(f"--process_id={process_id}: must be in [0, {num_processes}) for "
                     f"--num_processes={num_processes}")
  if num_processes == 1:
    return
  if not coordinator_address:
    raise ValueError("--num_processes > 1 needs --coordinator_address=host:port (the address "
                     "of process 0, the same for every process)")
  if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", coordinator_address):
    raise ValueError(f"--coordinator_address={coordinator_address!r}: expected host:port, "
                     "e.g. localhost:12345 or 10.0.0.1:12345")
  # Only read by the CPU backend (gloo collectives across processes); set
  # before the backend starts, which asking jax.default_backend() would do.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
