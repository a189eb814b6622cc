"""Data-parallel training with Orbax checkpoints: the teacher, and the loop
that the Di4C distillation reuses.

The step is a jitted pure function of (state, batch, key) over a mesh of all
devices of all hosts: the batch is sharded along "data", parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce. The
key of step k is fold_in(PRNGKey(seed), k), so a resumed run draws exactly
the randomness of an uninterrupted one; the data position is the step too
(`Batcher.batch(step)` is a pure function of it).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
import zlib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from mixture_dd import configuration, losses, networks, samplers, visualize
from mixture_dd.data import pipeline

log = logging.getLogger("mixture_dd")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


# ---------------------------------------------------------------------------
# Pieces.
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
      return optax.warmup_cosine_decay_schedule(0.0, peak, max(warm, 1),
                                                max(num_steps, warm + 1), end_value=0.1 * peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warm, 1)),
                                 optax.constant_schedule(peak)], [max(warm, 1)])

  def adamw(peak):
    return optax.adamw(schedule(peak), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)

  mult = float(optim.get("latent_lr_mult", 1.0))
  if mult == 1.0:
    opt = adamw(optim.lr)
  else:
    def labels(params):
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
      return flax.traverse_util.unflatten_dict(
          {k: ("latent" if networks.LATENT_MODULE in k else "rest") for k in flat})
    opt = optax.multi_transform({"latent": adamw(optim.lr * mult), "rest": adamw(optim.lr)},
                                labels)
  return optax.chain(optax.clip_by_global_norm(optim.clip), opt)


def init_state(params, optimizer) -> TrainState:
  """Step 0: the parameters, their EMA copy and the optimizer's state (jitted:
  eager op-by-op dispatch would compile every small op separately)."""
  @jax.jit
  def init(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params))
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
        state.params, batch, key, frozen)
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
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def shard_step(step_fn, mesh):
  """jit with the batch split over "data" and everything else replicated."""
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  return jax.jit(step_fn, in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


def global_batch(mesh, local_batch: dict):
  """Per-process numpy batch -> one global array sharded over "data"."""
  sh = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


class IncompatibleCheckpoint(ValueError):
  pass


def check_signature(saved: dict, expected: dict, where: str) -> None:
  bad = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
  if bad:
    lines = ", ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in sorted(bad.items()))
    raise IncompatibleCheckpoint(
        f"checkpoint in {where} was made with another configuration ({lines}). "
        "Use a fresh --workdir, or set these config fields to the checkpoint's values.")


def checkpoint_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """Keeps the newest `keep` steps. Leftovers of an interrupted save
  (`*.orbax-checkpoint-tmp*` directories) are never listed as steps and are
  deleted when the manager opens."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True))


def fingerprint(state) -> str:
  """CRC32 of every leaf's bytes: detects a checkpoint whose files were
  damaged in a way the storage format does not notice (flipped bytes)."""
  crc = 0
  for x in jax.tree.leaves(state):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)  # replicated: every process holds the whole array
    crc = zlib.crc32(np.ascontiguousarray(np.asarray(x)).tobytes(), crc)
  return f"{crc:08x}"


def save(mngr, state: TrainState, meta: dict) -> None:
  """Asynchronous save. Orbax writes to a temporary directory and renames it
  when complete, so a crash mid-save never replaces a good checkpoint."""
  meta = dict(meta, fingerprint=fingerprint(state))
  mngr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


CORRUPT_SUFFIX = ".corrupt"


def restore_latest(mngr, abstract_state, signature: dict, where: str):
  """(state, meta) from the newest readable checkpoint, or (None, None) if none.

  A checkpoint that fails to read (truncated, corrupted, no metadata) is
  skipped with a warning naming its step, and the previous one is tried; the
  bad ones are then renamed to `<step>.corrupt` (kept for inspection, never
  listed again) so that training can save those steps afresh. A checkpoint
  of another configuration raises IncompatibleCheckpoint naming the fields.
  Raises RuntimeError if checkpoints exist but none is readable.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  bad = []
  for step in steps:
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if not isinstance(meta, dict):
        raise ValueError(f"metadata is {type(meta).__name__}, not a dict")
    except Exception as e:  # noqa: BLE001 - any read failure means "unusable"
      log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an earlier one",
                  step, where, type(e).__name__, str(e)[:200])
      bad.append(step)
      continue
    check_signature(meta.get("signature", {}), signature, where)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
      state = restored["state"]
      if "fingerprint" in meta and fingerprint(state) != meta["fingerprint"]:
        raise ValueError("its contents do not match the fingerprint saved with it")
    except Exception as e:  # noqa: BLE001
      log.warning("checkpoint step %d in %s is corrupted (%s: %s); trying an earlier one",
                  step, where, type(e).__name__, str(e)[:200])
      bad.append(step)
      continue
    if bad:
      log.warning("resuming %s from step %d; set aside bad checkpoint step(s) %s as "
                  "<step>%s", where, step, bad, CORRUPT_SUFFIX)
      _set_aside(mngr, bad)
    return state, meta
  if bad:
    raise RuntimeError(
        f"none of the checkpoints in {where} (steps {bad}) is readable; see the warnings "
        f"above. Move {mngr.directory} away to start from scratch, or use a fresh --workdir.")
  return None, None


def _set_aside(mngr, steps) -> None:
  """Renames step directories to `<step>.corrupt` (process 0; all wait)."""
  if jax.process_index() == 0:
    for step in steps:
      src = os.path.join(str(mngr.directory), str(step))
      dst = src + CORRUPT_SUFFIX
      n = 0
      while os.path.exists(dst):
        n += 1
        dst = f"{src}{CORRUPT_SUFFIX}{n}"
      if os.path.exists(src):
        os.rename(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("mixture_dd_set_aside_checkpoints")
  mngr.reload()


def _on_this_host(x):
  """A restore target on this host's first device: without one, Orbax reuses
  the saved sharding, which names the devices of the machine(s) that saved it
  (a checkpoint from a 2-process run fails to load in 1 process)."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def load_params(directory: str, abstract_params, signature: dict | None = None, ema: bool = True):
  """Parameters (EMA by default) of the newest good checkpoint in `directory`."""
  ckpt_dir = os.path.join(directory, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
        f"no checkpoints under {directory!r} (expected {ckpt_dir}); train one first with "
        "`python -m launch.train --config=... --workdir=DIR` and point to that DIR")
  mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001
      log.warning("checkpoint step %d in %s is unreadable (%s); trying an earlier one",
                  step, ckpt_dir, type(e).__name__)
      continue
    if signature is not None:
      check_signature(meta.get("signature", {}), signature, ckpt_dir)
    # Restore onto this process's first device whatever mesh saved it, so a
    # checkpoint written by 8 devices loads in a 1-device notebook.
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                          abstract_params)
    abstract = {"params": placed, "ema_params": placed}
    abstract = jax.tree.map(_on_this_host, abstract)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))["state"]
    except Exception as e:  # noqa: BLE001
      log.warning("checkpoint step %d in %s is corrupted (%s: %s); trying an earlier one",
                  step, ckpt_dir, type(e).__name__, str(e)[:200])
      continue
    return restored["ema_params" if ema else "params"], meta
  raise FileNotFoundError(f"no complete, readable checkpoint in {ckpt_dir}; train (or finish "
                          "training) the run in that workdir first")


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
  pass


def fit_scanned(state: TrainState, step_fn: Callable, batcher, num_steps: int, seed: int,
                frozen=None, chunk: int = 100, log_every: int = 0, desc: str = "fit"):
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
      log.info("%s step %d/%d loss=%.4g (%.1f steps/s, ETA %.0f s)", desc, lo + n, num_steps,
               losses_seen[-1], rate, (num_steps - lo - n) / rate)
  return state, (np.concatenate(seen) if seen else np.zeros((0,)))


@dataclasses.dataclass
class LoopConfig:
  workdir: str
  num_steps: int
  seed: int
  log_every: int = 50
  ckpt_every: int = 500
  keep: int = 3
  sample_every: int = 0
  desc: str = "train"


  def validate(self) -> None:
    if not self.workdir or not str(self.workdir).strip():
      raise ValueError("LoopConfig.workdir is empty; give the directory for checkpoints and logs")
    for f in ("num_steps", "log_every", "ckpt_every", "keep"):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"LoopConfig.{f} (config.train.{f}) must be a positive integer, "
                         f"got {v!r}")
    if self.sample_every < 0:
      raise ValueError(f"LoopConfig.sample_every (config.train.sample_every) must be >= 0 "
                       f"(0 = never), got {self.sample_every!r}")


def _bad_terms(metrics: dict) -> list[str]:
  bad = [k for k, v in metrics.items() if k != NONFINITE_PARAMS
         and not np.all(np.isfinite(np.asarray(v, np.float64)))]
  # Loss terms first (the cause), then the derived loss / grad_norm.
  derived = ("loss", "grad_norm")
  bad = sorted(k for k in bad if k not in derived) + [k for k in derived if k in bad]
  if int(np.asarray(metrics.get(NONFINITE_PARAMS, 0))) > 0:
    bad.append("parameters")
  return bad


def fit(loop: LoopConfig, state: TrainState, step_fn: Callable, batcher, mesh,
        signature: dict, sample_hook: Callable | None = None, extra_meta: dict | None = None,
        frozen=None):
  """Runs (or resumes) training to `loop.num_steps`; returns the final state.

  Stops with NonFiniteError naming the step and the loss terms that went
  NaN/Inf; that state is never saved. SIGTERM (preemption) saves the
  current step and returns early.
  """
  loop.validate()
  os.makedirs(loop.workdir, exist_ok=True)
  mngr = checkpoint_manager(os.path.join(loop.workdir, "checkpoints"), loop.keep)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored, meta = restore_latest(mngr, abstract, signature, loop.workdir)
  if restored is not None:
    state = restored
    log.info("resumed from step %d in %s", int(state.step), loop.workdir)
  state = replicate(state, mesh)
  jstep = shard_step(step_fn, mesh)
  frozen = replicate(frozen, mesh) if frozen is not None else None
  root = jax.random.key(loop.seed)
  meta = dict(extra_meta or {}, signature=signature, seed=loop.seed)
  writer = _writer(loop.workdir)
  preemption = _Preemption()
  start = int(state.step)
  bar = _progress(start, loop.num_steps, loop.desc)
  t0, pending = time.time(), None
  try:
    for step in range(start, loop.num_steps):
      batch = global_batch(mesh, batcher.batch(step))
      new_state, metrics = jstep(state, batch, jax.random.fold_in(root, step), frozen)
      # Check the previous step's metrics while this one runs (no stall).
      if pending is not None:
        _check_finite(*pending)
      pending = (step, metrics)
      state = new_state
      done = step + 1
      bar.update(1)
      if done % loop.log_every == 0 or done == loop.num_steps:
        _check_finite(*pending)
        m = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()
             if k != NONFINITE_PARAMS}
        rate = (done - start) / max(time.time() - t0, 1e-9)
        bar.set_postfix({k: f"{v:.4g}" for k, v in m.items() if k in ("loss", "grad_norm")})
        log.info("%s step %d/%d %s (%.2f steps/s)", loop.desc, done, loop.num_steps,
                 " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())), rate)
        if writer is not None:
          for k, v in m.items():
            writer.add_scalar(f"{loop.desc}/{k}", v, done)
          writer.add_scalar(f"{loop.desc}/steps_per_s", rate, done)
      if sample_hook is not None and loop.sample_every and done % loop.sample_every == 0:
        sample_hook(state, done)
      preempted = preemption.reached(done)
      if done % loop.ckpt_every == 0 or done == loop.num_steps or preempted:
        _check_finite(*pending)
        save(mngr, state, meta)
      if preempted:
        log.warning("%s: preempted (SIGTERM); saved step %d and stopping. Run the same "
                    "command again to resume.", loop.desc, done)
        break
  finally:
    mngr.wait_until_finished()
    mngr.close()
    bar.close()
    if writer is not None:
      writer.close()
    preemption.close()
  return state


class _Preemption:
  """Has a SIGTERM arrived? One process: our own signal handler. Several:
  JAX's preemption service (jax.distributed), which propagates a notice to
  every process and agrees on one step at which all of them save, so no
  process leaves the collectives while the others wait in them."""

  def __init__(self):
    self._flag = []
    self._old = None
    from jax._src import distributed
    self._sync = (distributed.global_state.preemption_sync_manager
                  if jax.process_count() > 1 else None)
    if self._sync is None and _main_thread():
      self._old = signal.signal(signal.SIGTERM, lambda *a: self._flag.append(True))

  def reached(self, step: int) -> bool:
    if self._sync is not None:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return bool(self._flag)

  def close(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None


def _check_finite(step, metrics):
  m = jax.device_get(metrics)
  bad = _bad_terms(m)
  if bad:
    vals = ", ".join(f"{k}={float(np.asarray(m[k])):.4g}" if k in m else
                     f"{int(np.asarray(m[NONFINITE_PARAMS]))} non-finite entries" for k in bad)
    raise NonFiniteError(
        f"non-finite values at step {step + 1} in {bad} ({vals}); the run stopped and this "
        "state was not saved. Lower optim.lr, check the data and the teacher, or resume from "
        "the last checkpoint.")


def _main_thread():
  import threading
  return threading.current_thread() is threading.main_thread()


def _writer(workdir):
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _progress(start, total, desc):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc=desc, disable=jax.process_index() != 0,
              mininterval=2.0, dynamic_ncols=True)


# ---------------------------------------------------------------------------
# The teacher.
# ---------------------------------------------------------------------------


def teacher_logits_fn(model, label_dropout: float = 0.0):
  """`(params, x_t, t, labels, key, train) -> logits`, with label dropout."""
  def fn(params, x_t, t, labels, key, train):
    k_drop, k_lab = jax.random.split(key)
    kwargs = {}
    if model.num_classes > 0 and labels is not None:
      if train and label_dropout > 0:
        drop = jax.random.bernoulli(k_lab, label_dropout, labels.shape)
        labels = jnp.where(drop, model.num_classes, labels)
      kwargs["labels"] = labels
    return model.apply({"params": params}, x_t, t, train=train, rngs={"dropout": k_drop}, **kwargs)
  return fn


def product_denoiser(model, labels=None):
  """The sampler's view of a trained teacher: `(params, x, t, key) -> logits`."""
  def fn(params, x, t, key):
    kw = {"labels": labels} if labels is not None and model.num_classes else {}
    return model.apply({"params": params}, x, t, **kw)
  return fn


def setup_teacher(config):
  """(spec, train source, process, model, loss_fn) from a validated config."""
  spec, source = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  process.check_tokens(source.tokens[:1000], f"data set {spec.name} tokens")
  model = configuration.make_model(config, spec, process)
  logits_fn = teacher_logits_fn(model, config.model.label_dropout)

  def loss_fn(params, batch, key, frozen=None):
    del frozen
    return losses.teacher_loss(logits_fn, params, process, batch["tokens"], key,
                               t_min=config.loss.t_min,
                               labels=batch["labels"] if model.num_classes else None)
  return spec, source, process, model, loss_fn


def init_params(model, seed: int):
  """The model's initial parameters, one jitted program (eager flax init
  compiles every op separately: seconds on a CPU)."""
  @jax.jit
  def init(key):
    x = jnp.zeros((1, model.length), jnp.int32)
    kw = {"lam": jnp.zeros((1,))} if model.latent else {}
    return model.init(key, x, jnp.zeros((1,)), **kw)["params"]
  return init(jax.random.key(seed))


def make_batcher(config, spec, source) -> pipeline.Batcher:
  """This process's Batcher over the global batch, after checking it splits over the devices."""
  t = config.train
  if t.batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by the "
                     f"number of devices ({jax.device_count()})")
  return pipeline.Batcher(source.tokens, source.labels, t.batch_size, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          vocab_size=spec.vocab_size)


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains a product-denoiser teacher as configured; checkpoints in workdir."""
  spec, source, process, model, loss_fn = setup_teacher(config)
  t = config.train
  mesh = make_mesh()
  batcher = make_batcher(config, spec, source)
  optimizer = make_optimizer(config.optim, t.num_steps)
  state = init_state(init_params(model, config.seed), optimizer)
  step_fn = make_step(loss_fn, optimizer, config.optim.ema_decay, config.optim.ema_warmup)
  signature = configuration.model_signature(config, spec)
  _write_config(workdir, config)
  hook = _sample_hook(config, spec, process, product_denoiser(model), workdir, "teacher")
  loop = LoopConfig(workdir=workdir, num_steps=t.num_steps, seed=config.seed,
                    log_every=t.log_every, ckpt_every=t.ckpt_every, keep=t.keep,
                    sample_every=t.sample_every, desc="teacher")
  return fit(loop, state, step_fn, batcher, mesh, signature, hook,
             extra_meta={"kind": "teacher", "data": spec.name})


def _write_config(workdir, config):
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def _sample_hook(config, spec, process, denoiser, workdir, tag):
  t = config.train

  def hook(state, step):
    if jax.process_index() != 0:
      return
    x = samplers.sample(jax.random.key(step), process, denoiser, state.ema_params,
                        min(t.num_samples, 64), spec.length, t.sample_steps)
    visualize.save_samples(np.asarray(x), spec, os.path.join(workdir, "samples", f"{tag}_{step:07d}"))
  return hook
