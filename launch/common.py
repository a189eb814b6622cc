"""What every launcher does first: flags, logging and (optionally) multi-host set-up.

Every launcher runs through `run(main, required=...)`: absl's app.run with
our own flag parsing, so that every mistake on the command line is one line
`error: ...` and exit status 2 (`--debug` shows the traceback), not a
traceback or absl's FATAL:

  * `--config` takes a config file (`configs/digits.py`, `configs/digits.py:ci`)
    or an installed config by name (`digits`, `digits:ci`: the file in
    mixture_dd.configs), so a launcher runs from any directory;
  * every `--config.a.b=value` is checked against the config before anything
    runs: an unknown field names the closest existing one (difflib) or lists
    the section's fields; `--show_config` prints every field with its value
    and type and exits;
  * `--help` shows the launcher's own flags (absl's `--helpfull`: all flags).

Exit status: 0 done; 2 a user error; 75 preempted by SIGTERM (rerun the same
command to resume; schedulers may requeue on it); 130 stopped by Ctrl-C
(the step is saved; rerun the same command to resume).

Multi-process runs (one process per host, or several on one machine):

  python -m launch.train --config=... --workdir=SHARED_DIR \
      --num_processes=2 --process_id=0 --coordinator_address=host0:12345
  (and the same with --process_id=1 on the other host)

Every process must see the same --workdir (a shared file system); each one
reads only its slice of every global batch.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
import tempfile

import jax
import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mixture_dd import checkpoints, trainer

FLAGS = flags.FLAGS

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


class UsageError(ValueError):
  """A command line that cannot run as given (a flag, a config field)."""


# Errors a user can fix from the command line: one line and exit status 2,
# not a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  NotADirectoryError,
  trainer.NonFiniteError,
  checkpoints.UnreadableCheckpoints,
)
EXIT_USER_ERROR = 2
HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")


def define_config_flag(help_string: str, lock_config: bool = True):
  """`--config=FILE[:arg]` (or an installed config's name) with
  `--config.a.b=value` overrides, and `--show_config`.

  Fields that default to None are `config_dict.placeholder`s in the config
  schema, so they take a typed value on the command line too.
  """
  holder = config_flags.DEFINE_config_file(
    "config",
    None,
    f"{help_string} A config file (configs/digits.py, configs/digits.py:ci) or an installed "
    f"config's name (digits, digits:ci; one of: {', '.join(installed_configs())}). Override "
    "any field with --config.SECTION.FIELD=VALUE; --show_config lists them.",
    lock_config=lock_config,
  )
  flags.DEFINE_bool(
    "show_config", False, "Print every field of --config with its value and type, and exit."
  )
  return holder


def installed_configs() -> dict[str, str]:
  """{name: file} of the configs installed as mixture_dd.configs."""
  from mixture_dd import configs

  d = os.path.dirname(os.path.abspath(configs.__file__))
  return {
    f[:-3]: os.path.join(d, f)
    for f in sorted(os.listdir(d))
    if f.endswith(".py") and not f.startswith("_")
  }


# ---------------------------------------------------------------------------
# Running a launcher.
# ---------------------------------------------------------------------------


def run(main, required=(), argv=None):
  """Runs a launcher's `main` as absl's app.run does, with our exits.

  A preempted run exits with trainer.EXIT_PREEMPTED (75) and the line to
  rerun, a Ctrl-C'd one with trainer.EXIT_INTERRUPTED (130); a user error
  (bad flag or config field, missing run, unwritable output) prints one line
  (the traceback with --debug) and exits with EXIT_USER_ERROR (2).
  `required`: flags that must be given (checked here, so that the message is
  ours). With `argv` (tests, notebooks) the launcher runs in this process and
  the exit status is returned instead of exiting.
  """
  launcher = _Launcher(main, tuple(required))
  if argv is None:
    app.run(launcher.main, flags_parser=launcher.parse)
    return None
  old = sys.argv
  sys.argv = list(argv)  # config_flags reads the overrides from sys.argv
  try:
    return launcher.main(launcher.parse(list(argv))) or 0
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = old


def _fail(message: str, status: int = EXIT_USER_ERROR):
  print(message, file=sys.stderr, flush=True)
  sys.exit(status)


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class _Launcher:
  def __init__(self, main, required):
    self._main, self._required = main, required

  # -- flags ------------------------------------------------------------------

  def parse(self, argv):
    """absl's flag parsing, every failure one line and exit 2."""
    debug = any(re.fullmatch(r"--?debug(=(1|true|True))?", a) for a in argv[1:])
    try:
      if any(a in HELP_ARGS for a in argv[1:]):
        print(self.help_text())
        sys.exit(0)
      if "config" in FLAGS:
        argv = _resolve_config_arg(argv)
      _forget_previous_parse()
      rest = FLAGS(argv)
      show = "show_config" in FLAGS and FLAGS.show_config
      for name in ("config",) if show else self._required:
        if FLAGS[name].value is None:
          what = FLAGS[name].help.split(". ")[0].rstrip(".")
          if name == "config":
            what = "a config file or an installed config's name (e.g. --config=digits:ci)"
          raise UsageError(f"--{name} is required: {what}")
      return rest
    except Exception as e:
      if debug:
        raise
      _fail(f"error: {_parse_error_line(e)}  (see --help)")

  def help_text(self) -> str:
    module = sys.modules.get(self._main.__module__)
    doc = (module.__doc__ or "").strip() if module else ""
    own = self._main.__module__
    # absl files the flags of a `python -m` module under sys.argv[0].
    key = sys.argv[0] if own == "__main__" else own
    parts = [doc, "", "flags:"]
    for name in (key, __name__):
      text = FLAGS.module_help(name).strip("\n").split("\n", 1)
      if len(text) == 2:  # the first line is the module's name
        parts.append(text[1])
    parts.append(
      "\nExit status: 0 done, 2 a user error (--debug shows the traceback), 75 preempted "
      "(SIGTERM), 130 stopped by Ctrl-C; after 75 or 130 the same command resumes. "
      "All flags, the libraries' too: --helpfull."
    )
    return "\n".join(parts)

  # -- main ---------------------------------------------------------------------

  def main(self, argv):
    try:
      if "show_config" in FLAGS and FLAGS.show_config:
        try:
          print(format_config(FLAGS.config, FLAGS["config"].config_filename), flush=True)
        except BrokenPipeError:  # `--show_config | head`: the reader has all it wants
          os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
      return self._main(argv)
    except trainer.Interrupted as e:
      _fail(str(e), trainer.EXIT_INTERRUPTED)
    except trainer.Preempted as e:
      _fail(str(e), trainer.EXIT_PREEMPTED)
    except KeyboardInterrupt:
      if _DEBUG.value:
        raise
      _fail(
        "stopped by Ctrl-C; nothing was saved at this point: the same command resumes from "
        "the last checkpoint, if there is one",
        trainer.EXIT_INTERRUPTED,
      )
    except USER_ERRORS as e:
      if _DEBUG.value:
        raise
      _fail(f"error: {_one_line(e)}  (rerun with --debug for the traceback)")


def _forget_previous_parse() -> None:
  """Lets a process parse a second command line (tests, notebooks): absl
  keeps the values of the first, and config_flags defines one flag per
  override it saw, which it may not define twice."""
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)
  FLAGS.unparse_flags()  # also after a parse that failed half-way


def _parse_error_line(e: Exception) -> str:
  text = str(e)
  if isinstance(e, UsageError):
    return _one_line(text)
  if "Error whilst parsing config file" in text:
    # config_flags wraps the config's own error in its traceback: keep the error.
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{lines[0].split(':')[0].removeprefix('flag ')}: {lines[-1].strip()}"
  if isinstance(e, flags.Error):
    return _one_line(text.removeprefix("flag "))
  return f"{type(e).__name__}: {_one_line(text)}"


# ---------------------------------------------------------------------------
# --config: names, files and overrides.
# ---------------------------------------------------------------------------


def _config_arg(argv) -> tuple[int, str, str] | tuple[None, None, None]:
  """(index in argv, text before the value, the value) of the last --config,
  or (None, None, None)."""
  found = (None, None, None)
  for i, a in enumerate(argv[1:], 1):
    m = re.fullmatch(r"(--?config=)(.*)", a)
    if m:
      found = (i, m.group(1), m.group(2))
    elif re.fullmatch(r"--?config", a) and i + 1 < len(argv):
      found = (i + 1, "", argv[i + 1])
  return found


def resolve_config_path(value: str) -> str:
  """A --config value with its file made explicit: an existing file as given;
  an installed config's name (`digits`, `digits:ci`), or the README's
  `configs/NAME.py` run from outside the repository, as the installed file."""
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    return value
  installed = installed_configs()
  name = os.path.basename(path).removesuffix(".py")
  as_name = path == name or os.path.normpath(path) == os.path.join("configs", name + ".py")
  if as_name and name in installed:
    return installed[name] + sep + arg
  close = difflib.get_close_matches(name, list(installed), n=1)
  hint = f"did you mean {close[0]!r}? " if close else ""
  raise UsageError(
    f"--config={value}: no config file {path!r} (looked from {os.getcwd()}); {hint}give a "
    f"config file or an installed config's name: {', '.join(installed)}"
  )


def load_config(value: str):
  """The ConfigDict a --config value names (as config_flags loads it)."""
  path, _, arg = resolve_config_path(value).partition(":")
  spec = importlib.util.spec_from_file_location("_mixture_dd_checked_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - whatever the config file raises, one line
    raise UsageError(f"--config={value}: {type(e).__name__}: {_one_line(e)}") from e


def _resolve_config_arg(argv):
  """argv with --config's value resolved (`resolve_config_path`), after
  checking every --config.FIELD override against the config."""
  i, before, value = _config_arg(argv)
  if i is None:
    return argv
  argv = list(argv)
  argv[i] = before + resolve_config_path(value)
  overrides = [
    m.group(1) for a in argv[1:] if (m := re.match(r"--?(?:no)?config\.([^=]+)(=|$)", a))
  ]
  # Loaded here too (config_flags loads it again) so that an error in the
  # config file, or an override of a field it lacks, is named before anything runs.
  config = load_config(value)
  for path in overrides:
    check_field(config, path)
  return argv


def _leaves(config, prefix="config"):
  for k in config.keys():
    v = config[k]
    if isinstance(v, ml_collections.ConfigDict):
      yield from _leaves(v, f"{prefix}.{k}")
    else:
      yield f"{prefix}.{k}", v


def check_field(config, path: str) -> None:
  """Raises UsageError unless config.PATH exists, naming the closest field."""
  node, where = config, "config"
  parts = path.split(".")
  for j, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      raise UsageError(f"--config.{path}: {where} = {node!r} is a value, not a section")
    if part in node:
      node, where = node[part], f"{where}.{part}"
      continue
    keys = list(node.keys())
    close = difflib.get_close_matches(part, keys, n=1)
    rest = ".".join(parts[j + 1 :])
    if close:
      hint = f"did you mean --{where}.{close[0]}{'.' + rest if rest else ''}?"
    else:
      # The same name in another section (--config.train.lr is config.optim.lr)?
      elsewhere = [p for p, _ in _leaves(config) if p.rsplit(".", 1)[-1] == part]
      if elsewhere:
        hint = f"did you mean --{elsewhere[0]}?"
      elif keys:
        hint = f"{where} has: {', '.join(keys)}"
      else:
        hint = f"{where} has no fields"
      if "teacher" in config and where == "config.data":
        hint += " (a distillation takes the rest of data/process/model from its teacher's run)"
    raise UsageError(
      f"--config.{path}: {where} has no field {part!r}; {hint} (--show_config lists every field)"
    )


def format_config(config, source: str = "") -> str:
  """Every field of a config, one per line: `config.a.b = value  (type)`."""
  lines = [f"# {source}" if source else "# config"]
  if "teacher" in config:
    lines.append(
      "# a distillation config: data, process and model fields not listed here come from "
      "the teacher's run (config.teacher.workdir)"
    )
  for path, value in _leaves(config):
    parent, _, name = path.rpartition(".")
    node = config
    for part in parent.split(".")[1:]:
      node = node[part]
    try:
      kind = node.get_type(name).__name__
    except (AttributeError, KeyError, TypeError):
      kind = type(value).__name__
    if value is None and kind != "NoneType":
      kind += " or None"
    lines.append(f"{path} = {value!r}  ({kind})")
  lines.append("# override any field with --config.SECTION.FIELD=VALUE")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Checks of paths and values, before any work.
# ---------------------------------------------------------------------------


def check_writable_dir(path: str, flag: str, given: str | None = None) -> str:
  """The absolute path, after checking that a directory can be made (or
  written) there: a probe file in the nearest existing directory, removed
  at once. Nothing else is created. `given`: the flag's value as typed, when
  `path` was derived from it."""
  given = path if given is None else given
  if not path or not str(path).strip():
    raise UsageError(f"{flag} is empty; give a directory")
  full = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(full) and not os.path.isdir(full):
    if given != path:  # the directory of a path prefix
      raise UsageError(f"{flag}={given!r}: {full} is a file, not a directory; choose another path")
    raise UsageError(f"{flag}={given!r} exists and is not a directory; choose another path")
  probe = full
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UsageError(f"{flag}={given!r}: {probe} is a file, not a directory; choose another path")
  try:
    fd, tmp = tempfile.mkstemp(prefix=".mixture_dd_write_check", dir=probe)
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    raise UsageError(
      f"{flag}={given!r}: cannot write in {probe} ({e.strerror}); choose a directory you can "
      "write to"
    ) from None
  return full


def check_workdir(workdir: str, flag: str = "--workdir") -> str:
  """The absolute --workdir, after checking it can be a directory we write."""
  if not workdir or not workdir.strip():
    raise UsageError(f"{flag} is empty; give a directory for checkpoints, logs and samples")
  return check_writable_dir(workdir, flag)


def check_out_prefix(out: str, flag: str = "--out") -> str:
  """The absolute output prefix (OUT.npz, OUT.png, ...), after checking its
  directory can be written."""
  if not out or not out.strip():
    raise UsageError(f"{flag} is empty; give an output path prefix")
  full = os.path.abspath(os.path.expanduser(out))
  if os.path.isdir(full):
    raise UsageError(
      f"{flag}={out!r} is a directory; give a path prefix (files {out}.npz ... are written)"
    )
  check_writable_dir(os.path.dirname(full), flag, given=out)
  return full


def check_run(workdir: str, flag: str) -> str:
  """The absolute path of a train/distill run, after checking it is one."""
  full = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(full):
    why = "no such directory"
  elif not os.path.isfile(os.path.join(full, "config.json")):
    why = "no config.json in it"
  else:
    return full
  raise UsageError(
    f"{flag}={workdir!r} is not a run ({why}); give the --workdir of a finished launch.train "
    "or launch.distill run"
  )


def int_list(values, flag: str, minimum: int = 1) -> list[int]:
  """A comma-separated integer flag's values, each >= minimum."""
  if not values:
    raise UsageError(f"--{flag} is empty; give a comma-separated list such as --{flag}=1,2,4,8")
  out = []
  for v in values:
    try:
      n = int(v)
    except ValueError:
      raise UsageError(
        f"--{flag}={','.join(values)}: {v!r} is not an integer; give a comma-separated list "
        f"such as --{flag}=1,2,4,8"
      ) from None
    if n < minimum:
      raise UsageError(f"--{flag}={','.join(values)}: every value must be >= {minimum}, got {n}")
    out.append(n)
  return out


# ---------------------------------------------------------------------------
# Logging and processes.
# ---------------------------------------------------------------------------


class _TqdmHandler(logging.StreamHandler):
  """Log lines through tqdm.write: a progress bar on the terminal is cleared,
  the line printed on its own, and the bar drawn again below it."""

  def emit(self, record):
    from tqdm import tqdm

    try:
      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # noqa: BLE001 - logging must not raise
      self.handleError(record)


class _DropLibraryNoise(logging.Filter):
  """Warnings of the libraries that say nothing to a user of ours."""

  # TFDS, for each of our data sets and on their first build.
  NOISE = ("Using custom data configuration", "Variant folder")

  def filter(self, record):
    return not str(record.msg).startswith(self.NOISE)


def setup(argv):
  """Checks the launcher flags, sets up logging and (if asked) jax.distributed."""
  if len(argv) > 1:
    raise UsageError(
      f"unexpected arguments {argv[1:]}; all options are --flags "
      "(e.g. --config=configs/tiny.py --workdir=DIR)"
    )
  # Our progress lines at INFO; the libraries' (Orbax logs every file it
  # writes) only from WARNING up.
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropLibraryNoise) for f in absl_logger.filters):
    absl_logger.addFilter(_DropLibraryNoise())
  ours = logging.getLogger("mixture_dd")
  ours.setLevel(logging.INFO)
  if not any(isinstance(h, _TqdmHandler) for h in ours.handlers):
    handler = _TqdmHandler()
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
