"""The one training engine, for teachers and students alike.

A set-up (the teacher's in `train.py`, the student's in `distill.py`) hands
the trainer a `Task`: a loss, initial parameters, a batcher and what its
checkpoints must record. The trainer owns everything else: the optimizer,
the jitted step sharded over a mesh of all devices of all hosts (batch
split along "data", parameters and optimizer state replicated; XLA inserts
the gradient all-reduce), Orbax checkpoints, the loop with progress,
TensorBoard and a `metrics.jsonl` history, preemption and the sample hook.

The key of step k is fold_in(PRNGKey(seed), k) and the batch of step k is
`batcher.batch(k)`, so a resumed run draws exactly the randomness and the
data of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mixture_dd import networks, visualize

log = logging.getLogger("mixture_dd")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up, then constant or cosine decay; global-norm clip.

  optim.latent_lr_mult (default 1) scales the learning rate of the
  student's latent path (the `networks.LATENT_MODULE` sub-tree): it is new
  at the start of distillation while the rest is a trained teacher.
  """
  warm = max(int(optim.warmup_steps), 0)

  def schedule(peak):
    if optim.schedule == "cosine":
      return optax.warmup_cosine_decay_schedule(
        0.0, peak, max(warm, 1), max(num_steps, warm + 1), end_value=0.1 * peak
      )
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warm, 1)), optax.constant_schedule(peak)],
      [max(warm, 1)],
    )

  def adamw(peak):
    return optax.adamw(schedule(peak), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)

  mult = float(optim.get("latent_lr_mult", 1.0))
  if mult == 1.0:
    opt = adamw(optim.lr)
  else:

    def labels(params):
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
      return flax.traverse_util.unflatten_dict(
        {k: ("latent" if networks.LATENT_MODULE in k else "rest") for k in flat}
      )

    opt = optax.multi_transform({"latent": adamw(optim.lr * mult), "rest": adamw(optim.lr)}, labels)
  return optax.chain(optax.clip_by_global_norm(optim.clip), opt)


def init_params(model, seed: int):
  """The model's initial parameters, one jitted program (eager flax init
  compiles every op separately: seconds on a CPU)."""

  @jax.jit
  def init(key):
    x = jnp.zeros((1, model.length), jnp.int32)
    kw = {"lam": jnp.zeros((1,))} if model.latent else {}
    return model.init(key, x, jnp.zeros((1,)), **kw)["params"]

  return init(jax.random.key(seed))


def init_state(params, optimizer) -> TrainState:
  """Step 0: the parameters, their EMA copy and the optimizer's state (jitted:
  eager op-by-op dispatch would compile every small op separately)."""

  @jax.jit
  def init(params):
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=optimizer.init(params),
    )

  return init(params)


NONFINITE_PARAMS = "nonfinite_params"  # a metric: count of NaN/Inf parameter entries


def ema_decay_at(step, decay: float, warmup: bool = True):
  """The EMA decay used after optimizer step `step` (0-based).

  With warm-up (tauLDR): min(decay, (1 + n) / (10 + n)). Without it, a
  0.9999 EMA after 5000 steps still holds (0.9999)^5000 = 61 % of the
  initial weights; with it, the EMA forgets the start within ~10 steps and
  averages over the last ~n/10 steps until n reaches 1 / (1 - decay).
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def make_step(loss_fn: Callable, optimizer, ema_decay: float, ema_warmup: bool = True) -> Callable:
  """(state, batch, key, frozen) -> (state, metrics).

  `loss_fn(params, batch, key, frozen)`; `frozen` holds what the loss reads
  but never trains (the distillation teacher's parameters), replicated and
  passed as an argument so that it is never baked into the program. The EMA
  uses `ema_decay_at` (warm-up on by default).
  """

  def step(state: TrainState, batch, key, frozen=None):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, key, frozen
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay, ema_warmup)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    # Finite loss and gradients can still overflow the parameters (a huge
    # learning rate): count the non-finite entries of the updated state.
    bad = sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves((params, ema)))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), **{NONFINITE_PARAMS: bad})
    return TrainState(state.step + 1, params, ema, opt_state), metrics

  return step


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


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


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


def _newest_good(mngr, where: str, restore: Callable, signature: dict | None):
  """(step, meta, restored, bad steps) of the newest checkpoint that reads
  and passes `restore`, trying older ones after a warning; None if none."""
  bad = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = _read_meta(mngr, step)
    except Exception as e:  # noqa: BLE001 - any read failure means "unusable"
      log.warning(
        "checkpoint step %d in %s is unreadable (%s: %s); trying an earlier one",
        step,
        where,
        type(e).__name__,
        str(e)[:200],
      )
      bad.append(step)
      continue
    if signature is not None:
      check_signature(meta.get("signature", {}), signature, where)
    try:
      restored = restore(step, meta)
    except Exception as e:  # noqa: BLE001
      log.warning(
        "checkpoint step %d in %s is corrupted (%s: %s); trying an earlier one",
        step,
        where,
        type(e).__name__,
        str(e)[:200],
      )
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


def load_params(directory: str, abstract_params, signature: dict | None = None, ema: bool = True):
  """(params, meta) of the newest good checkpoint of a run directory.

  EMA parameters by default. meta holds what the run recorded (kind, data,
  signature, provenance) and the checkpoint's `step`. Whatever mesh saved
  the run, the parameters land on this process's first device, so a
  checkpoint written by 8 devices (or 2 processes) loads in a notebook.
  """
  ckpt_dir = os.path.join(directory, "checkpoints")
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


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
  pass


class Preempted(Exception):
  """A run stopped at a preemption notice (SIGTERM) after saving its step.

  Raised by `fit` so that whoever chains stages (the demo, a notebook, a
  script) stops instead of going on with a half-trained model. Launchers
  exit with status `EXIT_PREEMPTED` and the line to rerun.
  """

  why = "preempted (SIGTERM)"

  def __init__(self, desc: str, step: int, workdir: str):
    self.desc, self.step, self.workdir = desc, step, workdir
    super().__init__(
      f"{desc}: {self.why}; saved step {step} in {workdir}. Run the same command again to resume."
    )


class Interrupted(Preempted):
  """A run stopped by Ctrl-C (SIGINT) after saving its step; a second Ctrl-C
  stops at once (KeyboardInterrupt). Launchers exit with `EXIT_INTERRUPTED`."""

  why = "interrupted (Ctrl-C)"


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; schedulers may requeue on it
# 128 + SIGINT, what a shell reports for a Ctrl-C'd command: a user's stop is
# not a scheduler's "try again later" (75), so nothing requeues it.
EXIT_INTERRUPTED = 130


def fit_scanned(
  state: TrainState,
  step_fn: Callable,
  batcher,
  num_steps: int,
  seed: int,
  frozen=None,
  chunk: int = 100,
  log_every: int = 0,
  desc: str = "fit",
):
  """Runs `num_steps` steps with no checkpoints: `chunk` steps per jitted lax.scan.

  For small experiments, notebooks and tests, where the Python loop of `fit`
  (logging, checkpointing) would dominate. One device. Step j uses
  `batcher.batch(j)` and key fold_in(key(seed), j), as `fit` does. Returns
  (state, losses `[num_steps]`); raises NonFiniteError on a non-finite loss.
  """

  @jax.jit
  def run(state, tokens, labels, keys):
    def body(s, xs):
      tok, lab, key = xs
      s, m = step_fn(s, {"tokens": tok, "labels": lab}, key, frozen)
      return s, m["loss"]

    return jax.lax.scan(body, state, (tokens, labels, keys))

  root, seen, start = jax.random.key(seed), [], time.time()
  first = int(state.step)
  for lo in range(first, num_steps, chunk):
    n = min(chunk, num_steps - lo)
    batches = [batcher.batch(j) for j in range(lo, lo + n)]
    tokens = jnp.stack([b["tokens"] for b in batches])
    labels = jnp.stack([b["labels"] for b in batches])
    keys = jax.vmap(lambda j: jax.random.fold_in(root, j))(jnp.arange(lo, lo + n))
    state, losses_seen = run(state, tokens, labels, keys)
    losses_seen = np.asarray(losses_seen)
    if not np.isfinite(losses_seen).all():
      raise NonFiniteError(f"{desc}: non-finite loss between steps {lo + 1} and {lo + n}")
    seen.append(losses_seen)
    if log_every and ((lo + n) % log_every == 0 or lo + n == num_steps):
      rate = (lo + n - first) / max(time.time() - start, 1e-9)
      log.info(
        "%s step %d/%d loss=%.4g (%.1f steps/s, ETA %.0f s)",
        desc,
        lo + n,
        num_steps,
        losses_seen[-1],
        rate,
        (num_steps - lo - n) / rate,
      )
  return state, (np.concatenate(seen) if seen else np.zeros((0,)))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The loop's settings (config.train's fields; validated with the config)."""

  workdir: str
  num_steps: int
  seed: int
  log_every: int = 50
  ckpt_every: int = 500
  keep: int = 3
  sample_every: int = 0
  desc: str = "train"

  @classmethod
  def from_config(cls, config, workdir: str, desc: str) -> "LoopConfig":
    t = config.train
    return cls(
      workdir=workdir,
      num_steps=t.num_steps,
      seed=config.seed,
      log_every=t.log_every,
      ckpt_every=t.ckpt_every,
      keep=t.keep,
      sample_every=t.sample_every,
      desc=desc,
    )


def _bad_terms(metrics: dict) -> list[str]:
  bad = [
    k
    for k, v in metrics.items()
    if k != NONFINITE_PARAMS and not np.all(np.isfinite(np.asarray(v, np.float64)))
  ]
  # Loss terms first (the cause), then the derived loss / grad_norm.
  derived = ("loss", "grad_norm")
  bad = sorted(k for k in bad if k not in derived) + [k for k in derived if k in bad]
  if int(np.asarray(metrics.get(NONFINITE_PARAMS, 0))) > 0:
    bad.append("parameters")
  return bad


def fit(
  loop: LoopConfig,
  state: TrainState,
  step_fn: Callable,
  batcher,
  mesh,
  signature: dict,
  sample_hook: Callable | None = None,
  extra_meta: dict | None = None,
  frozen=None,
  provenance: dict | None = None,
  restart_if_changed: bool = False,
  config=None,
):
  """Runs (or resumes) training to `loop.num_steps`; returns the final state.

  A run whose checkpoints reached num_steps returns at once (a finished
  stage). Stops with NonFiniteError naming the step and the loss terms that
  went NaN/Inf; that state is never saved. A preemption notice (SIGTERM)
  saves the current step and raises `Preempted`; Ctrl-C (SIGINT) does the
  same and raises `Interrupted` (a second Ctrl-C stops at once).

  `provenance` (e.g. the teacher a student learns from) is recorded in every
  checkpoint; resuming checkpoints of another provenance raises
  ProvenanceChanged naming both, or with `restart_if_changed` sets those
  checkpoints aside (`checkpoints.stale*`) and starts afresh.

  Nothing is written into `loop.workdir` until its checkpoints are known to
  fit this run (signature, provenance): a refused resume leaves the workdir
  as it was. `config` (optional) is then recorded: config.json, and a line
  of config_history.jsonl naming the fields that changed since the last
  run in this workdir (`record_config`).
  """
  ckpt_dir = os.path.join(loop.workdir, "checkpoints")
  # Restore straight onto the replicated mesh sharding: with several
  # processes, moving a restored process-local array onto the global mesh
  # would need a cross-host transfer that CPU (gloo) backends lack.
  repl = NamedSharding(mesh, P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
  restored, meta, bad = None, None, []
  resuming = os.path.isdir(ckpt_dir)
  # Every process must take the same branch (a read-only manager, then the
  # writing one; each of Orbax's managers synchronises the processes): no
  # process creates the directory before all of them have looked.
  _sync("mixture_dd_looked_for_checkpoints")
  if resuming:
    reader = checkpoint_manager(ckpt_dir, read_only=True)
    try:
      restored, meta, bad = _restore_newest(reader, abstract, signature, loop.workdir)
    finally:
      reader.close()
  stale = None
  if restored is not None and provenance is not None and meta.get("provenance") != provenance:
    if not restart_if_changed:
      raise ProvenanceChanged(
        f"{loop.desc}: the checkpoints in {loop.workdir} (step {meta['step']}) were made from "
        f"{_describe(meta.get('provenance'))}, but this run uses {_describe(provenance)}. "
        "Use a fresh --workdir, or set config.teacher.restart_if_changed=True to set the old "
        "checkpoints aside and start afresh."
      )
    stale = _free_name(ckpt_dir + ".stale")
  # The checkpoints fit this run: from here on the workdir may be written.
  if jax.process_index() == 0:
    os.makedirs(loop.workdir, exist_ok=True)
  if stale is not None:
    log.warning(
      "%s: inputs changed since step %d; set aside %s as %s and starting afresh",
      loop.desc,
      meta["step"],
      ckpt_dir,
      stale,
    )
    if jax.process_index() == 0:
      os.rename(ckpt_dir, stale)
    _sync("mixture_dd_set_aside_stale")
    restored, bad = None, []
  elif bad:
    _set_aside(ckpt_dir, bad, loop.workdir, meta["step"])
  if restored is not None:
    state = restored
    log.info("resumed from step %d in %s", int(state.step), loop.workdir)
  start = int(state.step)
  if config is not None:
    record_config(loop.workdir, config, start, loop.desc)
  mngr = checkpoint_manager(ckpt_dir, loop.keep)
  state = replicate(state, mesh)
  jstep = shard_step(step_fn, mesh)
  frozen = replicate(frozen, mesh) if frozen is not None else None
  root = jax.random.key(loop.seed)
  meta = dict(extra_meta or {}, signature=signature, seed=loop.seed)
  if provenance is not None:
    meta["provenance"] = provenance
  history = _History(loop.workdir, loop.desc, start)
  preemption = _Preemption(mngr)
  bar = None
  pending, stopped = None, None
  t_compile = time.time()
  # Rates and ETAs are timed from the end of the first step's dispatch,
  # which includes compiling the step (seconds to minutes): a rate that
  # counted it would make the first ETAs far too long.
  t0, timed_from = None, start + 1
  try:
    for step in range(start, loop.num_steps):
      batch = global_batch(mesh, batcher.batch(step))
      new_state, metrics = jstep(state, batch, jax.random.fold_in(root, step), frozen)
      if t0 is None:
        t0 = time.time()
        log.info("%s: step compiled in %.1f s", loop.desc, t0 - t_compile)
        bar = _progress(start, loop.num_steps, loop.desc)
      # Check the previous step's metrics while this one runs (no stall).
      if pending is not None:
        _check_finite(*pending)
      pending = (step, metrics)
      state = new_state
      done = step + 1
      bar.update(1)
      if done % loop.log_every == 0 or done == loop.num_steps:
        _check_finite(*pending)
        m = {
          k: float(np.asarray(v))
          for k, v in jax.device_get(metrics).items()
          if k != NONFINITE_PARAMS
        }
        rate = (done - timed_from) / (time.time() - t0) if done > timed_from else None
        bar.set_postfix({k: f"{v:.4g}" for k, v in m.items() if k in ("loss", "grad_norm")})
        timing = f"{rate:.2f} steps/s, ETA {(loop.num_steps - done) / rate:.0f} s" if rate else ""
        log.info(
          "%s step %d/%d %s%s",
          loop.desc,
          done,
          loop.num_steps,
          " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())),
          f" ({timing})" if timing else "",
        )
        history.write(done, dict(m, steps_per_s=rate) if rate else m)
      if sample_hook is not None and loop.sample_every and done % loop.sample_every == 0:
        sample_hook(state, done)
      stop = preemption.reached(done)
      if stop:
        log.warning("%s: %s at step %d; saving it", loop.desc, stop.why, done)
      if done % loop.ckpt_every == 0 or done == loop.num_steps or stop:
        _check_finite(*pending)
        save(mngr, state, meta)
      if stop:
        stopped = (stop, done)
        break
  finally:
    preemption.close()
    mngr.wait_until_finished()
    mngr.close()
    getattr(batcher, "close", lambda: None)()  # a streaming batcher's read-ahead thread
    if bar is not None:
      bar.close()
    history.close()
  if stopped is not None:
    raise stopped[0](loop.desc, stopped[1], loop.workdir)
  return state


def _describe(provenance) -> str:
  if not provenance:
    return "an unrecorded input (a checkpoint older than provenance records)"
  return ", ".join(f"{k}={v}" for k, v in sorted(provenance.items()))


class _History:
  """TensorBoard scalars and a metrics.jsonl line per log step (process 0).

  A run resumed at step `start` first drops what an earlier attempt logged
  after it (a fallback to an older checkpoint, a preemption between a log
  step and the next save), so that every step appears once.
  """

  def __init__(self, workdir, desc, start: int = 0):
    self._desc = desc
    self._writer = self._file = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      path = os.path.join(workdir, "metrics.jsonl")
      truncate_metrics(path, start)
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1)
      self._file = open(path, "a")

  def write(self, step: int, metrics: dict) -> None:
    if self._writer is None:
      return
    for k, v in metrics.items():
      self._writer.add_scalar(f"{self._desc}/{k}", v, step)
    self._file.write(json.dumps(dict(step=step, time=time.time(), **metrics)) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._file.close()


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the lines of a metrics.jsonl whose step is after `last_step`."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= last_step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # a line cut short by a crash
  if len(keep) != len(lines):
    write_atomic(path, "".join(keep))


class _Preemption:
  """Has a preemption notice or a Ctrl-C arrived? Returns the exception the
  loop raises after saving (Preempted or Interrupted), or None.

  Several processes: Orbax's `reached_preemption` (JAX's preemption service
  propagates the notice to every process and agrees on one step at which all
  of them save, so no process leaves the collectives while the others wait
  in them); a Ctrl-C there is a KeyboardInterrupt. One process: our own
  SIGTERM and SIGINT handlers, installed for the loop only. The first Ctrl-C
  asks for a save at the end of the current step and puts back Python's
  handler, so that a second Ctrl-C raises KeyboardInterrupt at once.
  """

  def __init__(self, mngr):
    self._mngr, self._flag, self._old = mngr, [], {}
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._old[signal.SIGTERM] = signal.signal(
        signal.SIGTERM, lambda *a: self._flag.append(Preempted)
      )
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

  def _on_sigint(self, *args):
    self._flag.append(Interrupted)
    signal.signal(signal.SIGINT, self._old.get(signal.SIGINT) or signal.default_int_handler)

  def reached(self, step: int):
    if self._multi:
      return Preempted if self._mngr.reached_preemption(step) else None
    return self._flag[0] if self._flag else None

  def close(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}


def _check_finite(step, metrics):
  m = jax.device_get(metrics)
  bad = _bad_terms(m)
  if bad:
    vals = ", ".join(
      f"{k}={float(np.asarray(m[k])):.4g}"
      if k in m
      else f"{int(np.asarray(m[NONFINITE_PARAMS]))} non-finite entries"
      for k in bad
    )
    raise NonFiniteError(
      f"non-finite values at step {step + 1} in {bad} ({vals}); the run stopped and this "
      "state was not saved. Lower optim.lr, check the data and the teacher, or resume from "
      "the last checkpoint."
    )


def _progress(start, total, desc):
  """The loop's progress bar (process 0). Log lines written while it shows
  must go through `tqdm.write` (launch.common routes the mixture_dd logger
  there) or they run into the bar's line."""
  from tqdm.auto import tqdm

  return tqdm(
    total=total,
    initial=start,
    desc=desc,
    disable=jax.process_index() != 0,
    mininterval=2.0,
    dynamic_ncols=True,
  )


# ---------------------------------------------------------------------------
# Running a task.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
  """What a teacher or student set-up gives the trainer.

  loss_fn(params, batch, key, frozen) -> (loss, metrics); params: the
  initial parameters; batcher.batch(step) -> this process's numpy batch;
  signature: what the parameters' shapes depend on (checked on resume and
  load); meta: recorded in every checkpoint; frozen: what the loss reads but
  never trains; provenance: inputs a resume must match (a student's
  teacher); sample_fn(params, key, num) -> tokens `[num, length]` for the
  periodic sample grids; spec: the data's spec (how to draw the samples).
  """

  desc: str
  loss_fn: Callable
  params: Any
  batcher: Any
  signature: dict
  meta: dict
  spec: Any
  frozen: Any = None
  provenance: dict | None = None
  sample_fn: Callable | None = None


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
  checkpoints depend on never get here: `fit` refuses those first. Process 0
  writes. Returns the changes (None for the first run).
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


def describe_inputs(task: "Task", config, workdir: str) -> list[str]:
  """The lines a run starts with: for a student its teacher (what, where,
  which step, its data and process), then the data, process and budget."""
  lines = []
  proc = "/".join(str(config.process[k]) for k in ("name", "schedule") if k in config.process)
  if "teacher" in config:
    prov = task.provenance or {}
    what = task.meta.get("teacher", config.teacher.kind)
    if "workdir" in prov:
      tdata, tproc = "?", "?"
      try:
        with open(os.path.join(prov["workdir"], "config.json")) as f:
          tconf = json.load(f)
        tdata = tconf["data"]["name"]
        tproc = "/".join(
          str(tconf["process"][k]) for k in ("name", "schedule") if k in tconf["process"]
        )
      except (OSError, ValueError, KeyError):
        pass
      lines.append(
        f"{task.desc}: teacher {what} from {prov['workdir']} at step {prov.get('step')} "
        f"(data {tdata}, process {tproc})"
      )
    else:
      lines.append(
        f"{task.desc}: teacher {what} (no network; data {config.data.name}, process {proc})"
      )
  spec = task.spec
  classes = f", {spec.num_classes} classes" if spec.num_classes else ""
  data_dir = config.data.get("data_dir") or "~/.cache/mixture_dd/tfds"
  lines.append(
    f"{task.desc}: data {spec.name} (D={spec.length}, S={spec.vocab_size}{classes}; cache "
    f"{data_dir}), process {proc}; {config.train.num_steps} steps of batch "
    f"{config.train.batch_size} into {workdir}"
  )
  return lines


def sample_hook(sample_fn: Callable, spec, workdir: str, tag: str, num: int) -> Callable:
  """(state, step) -> None: saves a grid of `num` samples from the EMA weights."""

  def hook(state, step):
    if jax.process_index() != 0:
      return
    x = sample_fn(state.ema_params, jax.random.key(step), num)
    visualize.save_samples(
      np.asarray(x), spec, os.path.join(workdir, "samples", f"{tag}_{step:07d}")
    )

  return hook


def run(task: Task, config, workdir: str, restart_if_changed: bool = False) -> TrainState:
  """Trains `task` as config.optim / config.train say; checkpoints in workdir.

  Returns the final state; raises Preempted (Interrupted after a Ctrl-C)
  once it saved the step. config.json is written only once the workdir's
  checkpoints are known to fit the config (see `fit`).
  """
  t = config.train
  if t.batch_size % jax.device_count():
    raise ValueError(
      f"config.train.batch_size={t.batch_size} must be divisible by the "
      f"number of devices ({jax.device_count()})"
    )
  optimizer = make_optimizer(config.optim, t.num_steps)
  step_fn = make_step(task.loss_fn, optimizer, config.optim.ema_decay, config.optim.ema_warmup)
  for line in describe_inputs(task, config, workdir):
    log.info("%s", line)
  hook = None
  if task.sample_fn is not None and t.sample_every:
    hook = sample_hook(task.sample_fn, task.spec, workdir, task.desc, min(t.num_samples, 64))
  return fit(
    LoopConfig.from_config(config, workdir, task.desc),
    init_state(task.params, optimizer),
    step_fn,
    task.batcher,
    make_mesh(),
    task.signature,
    hook,
    extra_meta=task.meta,
    frozen=task.frozen,
    provenance=task.provenance,
    restart_if_changed=restart_if_changed,
    config=config,
  )
