"""The one training engine, for teachers and students alike: the loop.

A set-up (the teacher's in `teacher_training.py`, the student's in
`distill.py`) hands the trainer a `Task`: a loss, initial parameters, a
batcher, what its checkpoints must record and a sample hook. The trainer
runs the loop: the step (`train_step`) jitted over a mesh of all devices of
all hosts (`sharding`), checkpoints (`checkpoints`), progress, TensorBoard
and a `metrics.jsonl` history, preemption and the sample hook.

The key of step k is fold_in(PRNGKey(seed), k) and the batch of step k is
`batcher.batch(k)`, so a resumed run draws exactly the randomness and the
data of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mixture_dd import checkpoints, sharding, train_step

log = logging.getLogger("mixture_dd")


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


# ---------------------------------------------------------------------------
# The task and the loop.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
  """What a teacher or student set-up gives the trainer.

  loss_fn(params, batch, key, frozen) -> (loss, metrics); params: the
  initial parameters; batcher.batch(step) -> this process's numpy batch;
  signature: what the parameters' shapes depend on (checked on resume and
  load); meta: recorded in every checkpoint; spec: the data's spec (named
  in the run's first lines); frozen: what the loss reads but never trains;
  provenance: inputs a resume must match (a student's teacher);
  sample_hook(state, step, workdir) -> None: called every
  config.train.sample_every steps (e.g. `visualize.sample_hook`, which
  saves a grid of samples).
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
  sample_hook: Callable | None = None


def fit_scanned(
  state: train_step.TrainState,
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
    if k != train_step.NONFINITE_PARAMS and not np.all(np.isfinite(np.asarray(v, np.float64)))
  ]
  # Loss terms first (the cause), then the derived loss / grad_norm.
  derived = ("loss", "grad_norm")
  bad = sorted(k for k in bad if k not in derived) + [k for k in derived if k in bad]
  if int(np.asarray(metrics.get(train_step.NONFINITE_PARAMS, 0))) > 0:
    bad.append("parameters")
  return bad


def fit(
  task: Task,
  loop: LoopConfig,
  state: train_step.TrainState,
  step_fn: Callable,
  mesh=None,
  restart_if_changed: bool = False,
  config=None,
) -> train_step.TrainState:
  """Runs (or resumes) `task` to `loop.num_steps`; returns the final state.

  `state` and `step_fn` are the task's step 0 and step (`run` builds them
  from task.params, task.loss_fn and config.optim); the batcher, signature,
  meta, frozen, provenance and sample hook are the task's. `mesh`: all
  devices (`sharding.make_mesh`) unless given.

  A run whose checkpoints reached num_steps returns at once (a finished
  stage). Stops with NonFiniteError naming the step and the loss terms that
  went NaN/Inf; that state is never saved. A preemption notice (SIGTERM)
  saves the current step and raises `Preempted`; Ctrl-C (SIGINT) does the
  same and raises `Interrupted` (a second Ctrl-C stops at once).

  task.provenance (e.g. the teacher a student learns from) is recorded in
  every checkpoint; resuming checkpoints of another provenance raises
  ProvenanceChanged naming both, or with `restart_if_changed` sets those
  checkpoints aside (`checkpoints.stale*`) and starts afresh.

  Nothing is written into `loop.workdir` until its checkpoints are known to
  fit this run (signature, provenance): a refused resume leaves the workdir
  as it was. `config` (optional) is then recorded: config.json, and a line
  of config_history.jsonl naming the fields that changed since the last
  run in this workdir (`checkpoints.record_config`).
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  # Restore straight onto the replicated mesh sharding: with several
  # processes, moving a restored process-local array onto the global mesh
  # would need a cross-host transfer that CPU (gloo) backends lack.
  repl = NamedSharding(mesh, P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
  restored = checkpoints.restore_run(
    loop.workdir, abstract, task.signature, loop.desc, task.provenance, restart_if_changed
  )
  if restored is not None:
    state = restored
    log.info("resumed from step %d in %s", int(state.step), loop.workdir)
  start = int(state.step)
  if config is not None:
    checkpoints.record_config(loop.workdir, config, start, loop.desc)
  mngr = checkpoints.checkpoint_manager(checkpoints.checkpoint_dir(loop.workdir), loop.keep)
  state = sharding.replicate(state, mesh)
  jstep = sharding.shard_step(step_fn, mesh)
  frozen = sharding.replicate(task.frozen, mesh) if task.frozen is not None else None
  root = jax.random.key(loop.seed)
  meta = dict(task.meta or {}, signature=task.signature, seed=loop.seed)
  if task.provenance is not None:
    meta["provenance"] = task.provenance
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
      batch = sharding.global_batch(mesh, task.batcher.batch(step))
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
          if k != train_step.NONFINITE_PARAMS
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
      if task.sample_hook is not None and loop.sample_every and done % loop.sample_every == 0:
        task.sample_hook(state, done, loop.workdir)
      stop = preemption.reached(done)
      if stop:
        log.warning("%s: %s at step %d; saving it", loop.desc, stop.why, done)
      if done % loop.ckpt_every == 0 or done == loop.num_steps or stop:
        _check_finite(*pending)
        checkpoints.save(mngr, state, meta)
      if stop:
        stopped = (stop, done)
        break
  finally:
    preemption.close()
    mngr.wait_until_finished()
    mngr.close()
    getattr(task.batcher, "close", lambda: None)()  # a streaming batcher's read-ahead thread
    if bar is not None:
      bar.close()
    history.close()
  if stopped is not None:
    raise stopped[0](loop.desc, stopped[1], loop.workdir)
  return state


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
    checkpoints.write_atomic(path, "".join(keep))


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
      # A process started with Ctrl-C ignored (`nohup cmd &` from a script) stays deaf to it.
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
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
      else f"{int(np.asarray(m[train_step.NONFINITE_PARAMS]))} non-finite entries"
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


def run(
  task: Task, config, workdir: str, restart_if_changed: bool = False
) -> train_step.TrainState:
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
  optimizer = train_step.make_optimizer(config.optim, t.num_steps)
  step_fn = train_step.make_step(
    task.loss_fn, optimizer, config.optim.ema_decay, config.optim.ema_warmup
  )
  for line in describe_inputs(task, config, workdir):
    log.info("%s", line)
  return fit(
    task,
    LoopConfig.from_config(config, workdir, task.desc),
    train_step.init_state(task.params, optimizer),
    step_fn,
    sharding.make_mesh(),
    restart_if_changed=restart_if_changed,
    config=config,
  )
