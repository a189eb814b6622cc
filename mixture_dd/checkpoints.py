"""What a run keeps on disk: its checkpoints and the config it was made with.

Orbax checkpoints of the `TrainState` with the run's signature (what the
parameters' shapes depend on), its provenance and a checksum; a resume
falls back past unreadable or corrupted checkpoints and sets them aside;
`load_params` reads a run's parameters onto one device. config.json and
config_history.jsonl record the config of each run in a workdir; every
file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

if TYPE_CHECKING:
  from mixture_dd.train_step import TrainState

log = logging.getLogger("mixture_dd")


class IncompatibleCheckpoint(ValueError):
  pass


class ProvenanceChanged(IncompatibleCheckpoint):
  """A resumed run's inputs (e.g. a student's teacher) changed since its checkpoints."""


def check_signature(saved: dict, expected: dict, where: str) -> None:
  bad = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
  if bad:
    lines = ", ".join(
      f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in sorted(bad.items())
    )
    raise IncompatibleCheckpoint(
      f"checkpoint in {where} was made with another configuration ({lines}). "
      "Use a fresh --workdir, or set these config fields to the checkpoint's values."
    )


def checkpoint_manager(directory: str, keep: int = 1, read_only: bool = False):
  """Keeps the newest `keep` steps. Leftovers of an interrupted save
  (`*.orbax-checkpoint-tmp*` directories) are never listed as steps and are
  deleted when a writing manager opens."""
  if read_only:
    # The options read_only implies, given up front: Orbax warns when it has
    # to change them itself (and, unconditionally, that the directory is
    # read only: `_quiet_read_only` drops that line).
    options = ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False, cleanup_tmp_directories=False
    )
    with _quiet_read_only():
      return ocp.CheckpointManager(os.path.abspath(directory), options=options)
  else:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class _DropReadOnlyNotice(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only():
  """Orbax logs a warning each time a read-only manager opens: reading a
  checkpoint is not worth a warning."""
  quiet = _DropReadOnlyNotice()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


def _as_words(x):
  """The bits of an array as uint32 words `[n]` (2-byte types widened)."""
  x = jnp.asarray(x)
  size = x.dtype.itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  if size in (1, 2):
    small = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, small).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 4 bytes; 8 -> [..., 2]


@jax.jit
def _checksum_words(leaves):
  # Each word times an odd weight, summed mod 2^32: any change of one word
  # changes the sum (odd weights are invertible mod 2^32); the weights differ
  # by position, so swapped words are caught too.
  acc = jnp.uint32(0)
  for i, x in enumerate(leaves):
    w = _as_words(x)
    weights = (
      jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(2 * i)
    ) | jnp.uint32(1)
    acc = acc * jnp.uint32(1000003) + jnp.sum(w * weights, dtype=jnp.uint32)
  return acc


def checksum(tree) -> str:
  """A 32-bit checksum of every leaf's bits, computed on the device.

  Detects a checkpoint whose files were damaged in a way the storage format
  does not notice (flipped bytes). Only the scalar result leaves the
  device, so saving stays asynchronous (a host-side CRC would first copy the
  whole state to the host).
  """
  out = _checksum_words(jax.tree.leaves(tree))
  if not out.is_fully_addressable:
    out = out.addressable_data(0)
  return f"{int(np.asarray(out)):08x}"


def save(mngr, state: TrainState, meta: dict) -> None:
  """Asynchronous save. Orbax writes to a temporary directory and renames it
  when complete, so a crash mid-save never replaces a good checkpoint."""
  meta = dict(meta, checksum=checksum(state))
  mngr.save(
    int(state.step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
  )


CORRUPT_SUFFIX = ".corrupt"


def _read_meta(mngr, step: int) -> dict:
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if not isinstance(meta, dict):
    raise ValueError(f"metadata is {type(meta).__name__}, not a dict")
  return meta


def _skip(step: int, where: str, what: str, e: Exception) -> None:
  log.warning(
    "checkpoint step %d in %s is %s (%s: %s); trying an earlier one",
    step,
    where,
    what,
    type(e).__name__,
    str(e)[:200],
  )


def _newest_good(mngr, where: str, restore: Callable, signature: dict | None):
  """(step, meta, restored, bad steps) of the newest checkpoint that reads
  and passes `restore`, trying older ones after a warning; None if none."""
  bad = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = _read_meta(mngr, step)
    except Exception as e:  # noqa: BLE001 - any read failure means "unusable"
      _skip(step, where, "unreadable", e)
      bad.append(step)
      continue
    if signature is not None:
      check_signature(meta.get("signature", {}), signature, where)
    try:
      restored = restore(step, meta)
    except Exception as e:  # noqa: BLE001
      _skip(step, where, "corrupted", e)
      bad.append(step)
      continue
    return step, dict(meta, step=step), restored, bad
  return None, None, None, bad


class UnreadableCheckpoints(RuntimeError):
  """Checkpoints exist but none of them reads: never a silent fresh start."""


def _restore_newest(mngr, abstract_state, signature: dict, where: str):
  """(state, meta, bad steps) of the newest good checkpoint, (None, None, [])
  if there is none; writes nothing (see `restore_latest`)."""

  def restore(step, meta):
    state = mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )["state"]
    if "checksum" in meta and checksum(state) != meta["checksum"]:
      raise ValueError("its contents do not match the checksum saved with it")
    return state

  step, meta, state, bad = _newest_good(mngr, where, restore, signature)
  if step is None and bad:
    raise UnreadableCheckpoints(
      f"none of the checkpoints in {where} (steps {bad}) is readable; see the warnings "
      f"above. Move {mngr.directory} away to start from scratch, or use a fresh --workdir."
    )
  return state, meta, bad


def restore_latest(mngr, abstract_state, signature: dict, where: str):
  """(state, meta) from the newest readable checkpoint, or (None, None) if none.

  A checkpoint that fails to read (truncated, corrupted, no metadata, a
  checksum that does not match) is skipped with a warning naming its step,
  and the previous one is tried; the bad ones are then renamed to
  `<step>.corrupt` (kept for inspection, never listed again) so that
  training can save those steps afresh. A checkpoint of another
  configuration raises IncompatibleCheckpoint naming the fields. Raises
  UnreadableCheckpoints (a RuntimeError) if checkpoints exist but none is
  readable.
  """
  state, meta, bad = _restore_newest(mngr, abstract_state, signature, where)
  if bad:
    _set_aside(str(mngr.directory), bad, where, meta["step"])
    mngr.reload()
  return state, meta


def _set_aside(directory: str, steps, where: str, good_step: int) -> None:
  """Renames step directories to `<step>.corrupt` (process 0; all wait)."""
  log.warning(
    "resuming %s from step %d; set aside bad checkpoint step(s) %s as <step>%s",
    where,
    good_step,
    steps,
    CORRUPT_SUFFIX,
  )
  if jax.process_index() == 0:
    for step in steps:
      src = os.path.join(directory, str(step))
      if os.path.exists(src):
        os.rename(src, _free_name(src + CORRUPT_SUFFIX))
  _sync("mixture_dd_set_aside_checkpoints")


def _free_name(path: str) -> str:
  n, out = 0, path
  while os.path.exists(out):
    n += 1
    out = f"{path}{n}"
  return out


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def checkpoint_dir(workdir: str) -> str:
  """Where a run keeps its checkpoints."""
  return os.path.join(workdir, "checkpoints")


def restore_run(
  workdir: str,
  abstract_state,
  signature: dict,
  desc: str,
  provenance: dict | None = None,
  restart_if_changed: bool = False,
):
  """The newest good checkpoint of a run about to start or resume, or None.

  Refuses checkpoints of another configuration (IncompatibleCheckpoint) or
  another `provenance` (ProvenanceChanged, naming both) before anything is
  written, so a refused resume leaves the workdir as it was. Then creates
  the workdir and sets aside what the run cannot use: unreadable steps
  (`<step>.corrupt`, see `restore_latest`) and, with `restart_if_changed`,
  checkpoints of another provenance (`checkpoints.stale*`: the run starts
  afresh). `abstract_state` says the shapes, dtypes and shardings to
  restore onto. Every process calls this.
  """
  ckpt_dir = checkpoint_dir(workdir)
  restored, meta, bad = None, None, []
  resuming = os.path.isdir(ckpt_dir)
  # Every process must take the same branch (a read-only manager, then the
  # writing one; each of Orbax's managers synchronises the processes): no
  # process creates the directory before all of them have looked.
  _sync("mixture_dd_looked_for_checkpoints")
  if resuming:
    reader = checkpoint_manager(ckpt_dir, read_only=True)
    try:
      restored, meta, bad = _restore_newest(reader, abstract_state, signature, workdir)
    finally:
      reader.close()
  stale = None
  if restored is not None and provenance is not None and meta.get("provenance") != provenance:
    if not restart_if_changed:
      raise ProvenanceChanged(
        f"{desc}: the checkpoints in {workdir} (step {meta['step']}) were made from "
        f"{_describe(meta.get('provenance'))}, but this run uses {_describe(provenance)}. "
        "Use a fresh --workdir, or set config.teacher.restart_if_changed=True to set the old "
        "checkpoints aside and start afresh."
      )
    stale = _free_name(ckpt_dir + ".stale")
  # The checkpoints fit this run: from here on the workdir may be written.
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  if stale is not None:
    log.warning(
      "%s: inputs changed since step %d; set aside %s as %s and starting afresh",
      desc,
      meta["step"],
      ckpt_dir,
      stale,
    )
    if jax.process_index() == 0:
      os.rename(ckpt_dir, stale)
    _sync("mixture_dd_set_aside_stale")
    restored = None
  elif bad:
    _set_aside(ckpt_dir, bad, workdir, meta["step"])
  return restored


def _describe(provenance) -> str:
  if not provenance:
    return "an unrecorded input (a checkpoint older than provenance records)"
  return ", ".join(f"{k}={v}" for k, v in sorted(provenance.items()))


def load_params(directory: str, abstract_params, signature: dict | None = None, ema: bool = True):
  """(params, meta) of the newest good checkpoint of a run directory.

  EMA parameters by default. meta holds what the run recorded (kind, data,
  signature, provenance) and the checkpoint's `step`. Whatever mesh saved
  the run, the parameters land on this process's first device, so a
  checkpoint written by 8 devices (or 2 processes) loads in a notebook.
  """
  ckpt_dir = checkpoint_dir(directory)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
      f"no checkpoints under {directory!r} (expected {ckpt_dir}); train one first with "
      "`python -m launch.train --config=... --workdir=DIR` and point to that DIR"
    )
  mngr = checkpoint_manager(ckpt_dir, read_only=True)
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  placed = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract_params
  )
  abstract = {"params": placed, "ema_params": placed}

  def restore(step, meta):
    return mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=abstract,
          partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        )
      ),
    )["state"]

  try:
    step, meta, restored, _ = _newest_good(mngr, ckpt_dir, restore, signature)
  finally:
    mngr.close()
  if step is None:
    raise FileNotFoundError(
      f"no complete, readable checkpoint in {ckpt_dir}; train (or finish "
      "training) the run in that workdir first"
    )
  return restored["ema_params" if ema else "params"], meta


def write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and a rename: a reader (or a SIGTERM, or a
  crash) sees the previous file or the new one, never half of one."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_config(workdir: str, config) -> None:
  """config.json in the workdir (process 0): how `load_run` rebuilds the run."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


CONFIG_HISTORY = "config_history.jsonl"


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(old: dict, new: dict) -> dict:
  """{"section.field": [old value, new value]} for every field that differs
  between two configs (as JSON dicts; a field one of them lacks is None)."""
  a, b = _flatten(old), _flatten(new)
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def record_config(workdir: str, config, step: int, desc: str = "run") -> dict | None:
  """Writes config.json (how `load_run` rebuilds the run) and keeps its history.

  The first run in a workdir, and every later one whose config differs from
  the config.json there (a resume with another optim.lr, more train.num_steps,
  another data_dir...), appends a line to config_history.jsonl: time, the step
  it starts from, the command line and {field: [old, new]}. A change is also
  logged as a warning, so that no resume changes a run silently. Fields the
  checkpoints depend on never get here: `restore_run` refuses those first.
  Process 0 writes. Returns the changes (None for the first run).
  """
  text = config.to_json_best_effort(indent=2)
  path = os.path.join(workdir, "config.json")
  old = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except ValueError:
      log.warning("%s: %s is unreadable; writing it afresh", desc, path)
  changes = config_changes(old, json.loads(text)) if old is not None else None
  if old is not None and not changes:
    return changes
  if changes:
    log.warning(
      "%s: continuing %s at step %d with changed config fields: %s (recorded in %s)",
      desc,
      workdir,
      step,
      "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
      CONFIG_HISTORY,
    )
  if jax.process_index() == 0:
    entry = {
      "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "step": step,
      "event": "start" if old is None else "changed",
      "command": list(sys.argv),
      "changed": changes or {},
    }
    with open(os.path.join(workdir, CONFIG_HISTORY), "a") as f:
      f.write(json.dumps(entry) + "\n")
    write_atomic(path, text)
  return changes
