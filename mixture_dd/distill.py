"""Di4C distillation: a product (or mixture) teacher into a mixture student.

The pieces, in the order a distillation step uses them:
  * `sample_times`: t, u = t - Delta and the per-example gates of a preset
    (tauLDR, MaskGIT, SDTT: method.md section 4's table);
  * `Teacher`: any `(frozen, x_t, t, labels, key) -> logits` with its frozen
    parameters: our network (product), a distilled student (a mixture
    teacher for "di4c^2": its components' probabilities averaged over L
    latents), the exact ideal denoiser of a tiny family, or a user function;
  * `di4c_loss`: the distillation, consistency and data terms;
  * `distill_and_evaluate`: the sharded, checkpointed loop (train.fit).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixture_dd import categorical, configuration, exact, losses, networks, samplers, train
from mixture_dd.data import pipeline

log = logging.getLogger("mixture_dd")

PRESETS = {
    # tauLDR / CIFAR-10: every example gets both terms; fresh x_delta.
    "tauldr": dict(num_latents=16, t_sampling="uniform", t_min=0.01, t_offset_by_delta=True,
                   delta="loguniform", delta_lo=1e-3, delta_hi=1e-2, delta_frac=0.5,
                   distil_mode="separate", distil_lo=0.01, distil_hi=0.02, distil_threshold=0.0,
                   distil_weight=1.0, alpha_scale=1.0, data_weight=0.0,
                   small_t_prob=0.0, small_t_max=0.0),
    # MaskGIT / ImageNet: progress r = 1 - t; distil on r >= 0.95 with the same x_t.
    "maskgit": dict(num_latents=32, t_sampling="uniform", t_min=0.0, t_offset_by_delta=False,
                    delta="const", delta_lo=0.05, delta_hi=0.05, delta_frac=0.5,
                    distil_mode="same", distil_lo=0.0, distil_hi=0.0, distil_threshold=0.05,
                    distil_weight=20.0, alpha_scale=0.1, data_weight=0.0,
                    small_t_prob=0.0, small_t_max=0.0),
    # SDTT / OpenWebText: one t per batch, 30 % of batches near the data end.
    "sdtt": dict(num_latents=16, t_sampling="per_batch", t_min=0.0, t_offset_by_delta=False,
                 delta="min_frac", delta_lo=1.0 / 1024, delta_hi=1.0 / 1024, delta_frac=0.5,
                 distil_mode="same", distil_lo=0.0, distil_hi=0.0, distil_threshold=0.02,
                 distil_weight=1.0, alpha_scale=0.1, data_weight=0.0,
                 small_t_prob=0.3, small_t_max=0.02),
}
T_SAMPLINGS = ("uniform", "per_batch")
DELTAS = ("loguniform", "const", "min_frac")
DISTIL_MODES = ("separate", "same")


def preset(name: str, **overrides) -> ml_collections.ConfigDict:
  """The `distill` config section of a reference setup, with overrides."""
  if name not in PRESETS:
    raise ValueError(f"config.distill.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
  c = ml_collections.ConfigDict(dict(PRESETS[name], preset=name, latent_chunks=1,
                                     latent_init_scale=0.1))
  unknown = set(overrides) - set(c)
  if unknown:
    raise ValueError(f"config.distill: unknown fields {sorted(unknown)}; accepted: {sorted(c)}")
  c.update(overrides)
  return c


def validate_distill(d) -> None:
  def req(cond, field, msg):
    if not cond:
      raise ValueError(f"config.distill.{field}: {msg}")
  req(d.preset in PRESETS, "preset", f"{d.preset!r} is unknown; choose one of {sorted(PRESETS)}")
  req(d.num_latents >= 1, "num_latents", f"must be >= 1, got {d.num_latents}")
  req(d.latent_chunks >= 1 and d.num_latents % d.latent_chunks == 0, "latent_chunks",
      f"must divide num_latents={d.num_latents}, got {d.latent_chunks}")
  req(d.t_sampling in T_SAMPLINGS, "t_sampling", f"{d.t_sampling!r}; choose one of {T_SAMPLINGS}")
  req(d.delta in DELTAS, "delta", f"{d.delta!r}; choose one of {DELTAS}")
  req(0 < d.delta_lo <= d.delta_hi < 1, "delta_lo", f"need 0 < delta_lo <= delta_hi < 1, got "
      f"{d.delta_lo}, {d.delta_hi}")
  req(d.distil_mode in DISTIL_MODES, "distil_mode", f"{d.distil_mode!r}; choose one of {DISTIL_MODES}")
  if d.distil_mode == "separate":
    req(0 < d.distil_lo <= d.distil_hi < 1, "distil_lo",
        f"need 0 < distil_lo <= distil_hi < 1, got {d.distil_lo}, {d.distil_hi}")
  req(0.0 <= d.t_min < 1.0, "t_min", f"must be in [0, 1), got {d.t_min}")
  req(d.latent_init_scale >= 0, "latent_init_scale", f"must be >= 0, got {d.latent_init_scale}")
  req(d.distil_weight >= 0 and d.data_weight >= 0 and d.alpha_scale >= 0, "distil_weight",
      "distil_weight, data_weight and alpha_scale must be >= 0")


# ---------------------------------------------------------------------------
# Times and gates.
# ---------------------------------------------------------------------------


def sample_times(key, batch: int, d):
  """Per-example times and gates of a preset: a dict of `[batch]` arrays.

  t: the consistency / data time; u = t - Delta; distil_t: the time of the
  distillation term ("same" mode: t itself); w_distil, w_consis: 0/1 gates
  (masks, never Python control flow); alpha: the data term's weight.
  """
  k_t, k_d, k_small, k_pick, k_dist = jax.random.split(key, 5)
  if d.delta == "loguniform":
    delta = jnp.exp(jax.random.uniform(k_d, (batch,), minval=np.log(d.delta_lo),
                                       maxval=np.log(d.delta_hi)))
  else:
    delta = jnp.full((batch,), d.delta_lo)
  if d.t_sampling == "uniform":
    lo = d.t_min + (delta if d.t_offset_by_delta else 0.0)
    t = lo + (1.0 - lo) * losses.stratified_times(k_t, batch)
  else:  # one t per batch, a fraction of batches near the data end
    small = jax.random.bernoulli(k_pick, d.small_t_prob)
    u01 = jax.random.uniform(k_small, ())
    t_one = jnp.where(small, d.small_t_max * u01, d.small_t_max + (1.0 - d.small_t_max) * u01)
    t = jnp.full((batch,), t_one)
  t = jnp.clip(t, 1e-5, 1.0)
  if d.delta == "min_frac":
    delta = jnp.minimum(delta, d.delta_frac * t)
  u = jnp.maximum(t - delta, 0.0)
  if d.distil_mode == "separate":
    distil_t = jax.random.uniform(k_dist, (batch,), minval=d.distil_lo, maxval=d.distil_hi)
    w_distil = jnp.ones((batch,))
    w_consis = jnp.ones((batch,))
  else:
    distil_t = t
    w_distil = (t < d.distil_threshold).astype(jnp.float32)
    w_consis = 1.0 - w_distil
  alpha = d.alpha_scale * jax.nn.sigmoid(20.0 * (t - 0.5))
  return dict(t=t, u=u, distil_t=distil_t, w_distil=w_distil, w_consis=w_consis, alpha=alpha)


# ---------------------------------------------------------------------------
# Teachers and students.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Teacher:
  """fn(frozen, x_t [B, D], t [B], labels [B] | None, key) -> logits [B, D, S]."""
  fn: Callable
  frozen: Any
  description: str


def network_teacher(model: networks.Denoiser, params, num_latents: int = 16) -> Teacher:
  """Our network as a teacher: a product, or (latent=True) a mixture teacher.

  A mixture teacher's marginals average its components' probabilities over
  `num_latents` stratified latents (di4c^2: a student teaches the next round).
  """
  if not model.latent:
    def fn(frozen, x, t, labels, key):
      kw = {"labels": labels} if model.num_classes and labels is not None else {}
      return model.apply({"params": frozen}, x, t, **kw)
    return Teacher(fn, params, "product network")

  def mix(frozen, x, t, labels, key):
    b = x.shape[0]
    offs = jax.random.uniform(key, (b, 1))
    lam = jnp.mod(offs + jnp.arange(num_latents) / num_latents, 1.0)  # [B, L]
    rep = lambda a: jnp.repeat(a, num_latents, axis=0)
    kw = {"labels": rep(labels)} if model.num_classes and labels is not None else {}
    lp = jax.nn.log_softmax(model.apply({"params": frozen}, rep(x), rep(t), lam=lam.reshape(-1), **kw))
    return losses.mixture_log_marginals(lp.reshape((b, num_latents) + lp.shape[1:]))
  return Teacher(mix, params, f"mixture network (L={num_latents})")


def ideal_teacher(process, probs, length: int) -> Teacher:
  """The exact ideal product denoiser of a tiny family (exact.py)."""
  def fn(frozen, x, t, labels, key):
    return exact.ideal_log_marginals(process, frozen, length, x, t)
  return Teacher(fn, jnp.asarray(probs, jnp.float32), "exact ideal product denoiser")


def student_fn(model: networks.Denoiser):
  """(params, x [N, D], t [N], lam [N], labels, key, train) -> logits."""
  def fn(params, x, t, lam, labels, key, train):
    kw = {"labels": labels} if model.num_classes and labels is not None else {}
    return model.apply({"params": params}, x, t, lam=lam, train=train, rngs={"dropout": key}, **kw)
  return fn


# ---------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------


def di4c_loss(student: Callable, teacher: Teacher, process, d, label_dropout: float = 0.0,
              num_classes: int = 0):
  """`loss_fn(params, batch, key, frozen) -> (loss, metrics)` of method.md sec. 4.

  Gradients flow only through the student's passes at t (and, in
  "separate" mode, at the distillation time); the teacher, the x_u draws,
  the student at u and the x0 targets are all stop-gradient.
  """
  num_l = d.num_latents

  def rep(a):
    return None if a is None else jnp.repeat(a, num_l, axis=0)

  chunks = d.latent_chunks

  def student_lp(params, x, t, lam, labels, key, train, remat=True):
    """Component log-probs `[B, L, D, S]` for L latents `lam [B, L]`.

    With latent_chunks = c > 1 the L latents run as c sequential
    micro-batches of L / c (lax.map), each rematerialised in the backward
    pass, so activation memory scales with B x L / c instead of B x L. The
    values, and so the gradients, are those of the unchunked pass.
    """
    b, per = x.shape[0], num_l // chunks

    def one(lam_c, key_c):
      r = lambda a: None if a is None else jnp.repeat(a, per, axis=0)
      logits = student(params, r(x), r(t), lam_c.reshape(-1), r(labels), key_c, train)
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return lp.reshape((b, per) + lp.shape[1:])

    if chunks == 1:
      return one(lam, key)
    fn = jax.checkpoint(one) if remat else one
    lam_c = jnp.moveaxis(lam.reshape(b, chunks, per), 1, 0)  # [c, B, L/c]
    out = jax.lax.map(lambda a: fn(*a), (lam_c, jax.random.split(key, chunks)))
    return jnp.moveaxis(out, 0, 1).reshape((b, num_l) + out.shape[3:])

  def student_lp_at(params, x_rep, t, lam, labels, key):
    """Eval-mode component log-probs at per-latent inputs x_rep `[B * L, D]`."""
    b = lam.shape[0]
    if chunks == 1:
      logits = student(params, x_rep, rep(t), lam.reshape(-1), rep(labels), key, False)
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return lp.reshape((b, num_l) + lp.shape[1:])
    per = num_l // chunks
    xs = jnp.moveaxis(x_rep.reshape((b, chunks, per) + x_rep.shape[1:]), 1, 0)
    lam_c = jnp.moveaxis(lam.reshape(b, chunks, per), 1, 0)

    def one(a):
      x_c, lam_c1 = a
      r = lambda v: None if v is None else jnp.repeat(v, per, axis=0)
      logits = student(params, x_c.reshape((b * per,) + x_c.shape[2:]), r(t), lam_c1.reshape(-1),
                       r(labels), key, False)
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return lp.reshape((b, per) + lp.shape[1:])
    out = jax.lax.map(one, (xs, lam_c))
    return jnp.moveaxis(out, 0, 1).reshape((b, num_l) + out.shape[3:])

  def loss_fn(params, batch, key, frozen):
    x0 = batch["tokens"]
    b = x0.shape[0]
    keys = dict(zip(["times", "xt", "teacher", "lam_t", "drop_t", "step", "lam_u", "draw",
                     "xd", "teacher_d", "lam_d", "drop_d", "labels"],
                    jax.random.split(key, 13)))
    labels = batch.get("labels") if num_classes else None
    if labels is not None and label_dropout > 0:
      # The same dropped labels go to the teacher and the student.
      drop = jax.random.bernoulli(keys["labels"], label_dropout, labels.shape)
      labels = jnp.where(drop, num_classes, labels)
    tm = sample_times(keys["times"], b, d)
    t, u = tm["t"], tm["u"]
    x_t = process.sample_xt(keys["xt"], x0, t)
    teacher_logits = jax.lax.stop_gradient(teacher.fn(frozen, x_t, t, labels, keys["teacher"]))
    teacher_lp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
    lam = jax.random.uniform(keys["lam_t"], (b, num_l))
    lp = student_lp(params, x_t, t, lam, labels, keys["drop_t"], True)

    # Consistency: one teacher step t -> u, then the student at u as target.
    x_u = samplers.analytic_step(keys["step"], process, rep(x_t), rep(t), rep(u), rep(teacher_logits))
    lam_u = jax.random.uniform(keys["lam_u"], (b, num_l))
    q = jax.lax.stop_gradient(student_lp_at(jax.lax.stop_gradient(params), x_u, u, lam_u, labels,
                                            keys["drop_t"]))  # q_i, one per latent lambda'_i
    x0_i = categorical.sample(keys["draw"], q)  # [B, L, D]
    consis = losses.consistency_term(lp, q, x0_i)

    if d.distil_mode == "same":
      distil = losses.distillation_term(teacher_lp, lp)
    else:
      dt = tm["distil_t"]
      x_d = process.sample_xt(keys["xd"], x0, dt)
      t_lp = jax.nn.log_softmax(jax.lax.stop_gradient(
          teacher.fn(frozen, x_d, dt, labels, keys["teacher_d"])).astype(jnp.float32), -1)
      lam_d = jax.random.uniform(keys["lam_d"], (b, num_l))
      distil = losses.distillation_term(t_lp, student_lp(params, x_d, dt, lam_d, labels,
                                                         keys["drop_d"], True))
    data = losses.data_term(lp, teacher_lp, x0, tm["alpha"])

    per_example = (d.distil_weight * tm["w_distil"] * distil + tm["w_consis"] * consis
                   + d.data_weight * data)
    loss = jnp.mean(per_example)
    gate_mean = lambda v, w: jnp.sum(w * v) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {
        "distillation": gate_mean(distil, tm["w_distil"]),
        "consistency": gate_mean(consis, tm["w_consis"]),
        "data": jnp.mean(data),
        "frac_distil": jnp.mean(tm["w_distil"]),
        # NaN here names the teacher when its outputs go bad (the KLs mask
        # NaN probabilities, so the loss alone would stay finite).
        "teacher_check": jnp.where(jnp.all(jnp.isfinite(teacher_lp)), 0.0, jnp.nan),
    }
    return loss, metrics
  return loss_fn


# ---------------------------------------------------------------------------
# Building a distillation run from a config.
# ---------------------------------------------------------------------------


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: config.teacher.workdir must be the --workdir of a finished "
        "`launch.train` (or `launch.distill`) run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def resolve(config) -> ml_collections.ConfigDict:
  """Fills data/process/model from the teacher's run, so a student's config
  is complete on its own (and a student can teach the next round)."""
  config = ml_collections.ConfigDict(config.to_dict())
  kind = config.teacher.kind
  if kind == "network":
    if not config.teacher.workdir:
      raise ValueError("config.teacher.workdir is not set: give the --workdir of a finished "
                       "launch.train run (e.g. --config.teacher.workdir=workdirs/digits_teacher)")
    tconf = read_run_config(config.teacher.workdir)
    for sec in ("data", "process", "model"):
      merged = ml_collections.ConfigDict(tconf[sec].to_dict())
      if sec in config and config[sec] is not None:
        merged.update(config[sec])  # e.g. --config.data.data_dir=...
      config[sec] = merged
    if config.data.name != tconf.data.name:
      raise ValueError(f"config.data.name={config.data.name!r} differs from the teacher's "
                       f"data {tconf.data.name!r}")
  elif kind != "ideal":
    raise ValueError(f"config.teacher.kind={kind!r}; choose 'network' (a workdir of ours) or "
                     "'ideal' (the exact denoiser of a tiny family)")
  config.is_student = True
  return config


def setup_distillation(config):
  """(config, spec, source, process, student model, teacher, init params)."""
  config = resolve(config)
  spec, source = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  validate_distill(config.distill)
  process = configuration.make_process(config, spec)
  process.check_tokens(source.tokens[:1000], f"data set {spec.name} tokens")
  student_model = configuration.make_model(config, spec, process, latent=True)
  params = train.init_params(student_model, config.seed)
  if config.teacher.kind == "ideal":
    if spec.name != "tiny":
      raise ValueError("config.teacher.kind='ideal' needs config.data.name='tiny' (its exact law)")
    probs = exact.make_family(config.data.family, spec.vocab_size, spec.length, config.data.seed)
    teacher = ideal_teacher(process, probs, spec.length)
  else:
    tconf = read_run_config(config.teacher.workdir)
    latent = bool(tconf.get("is_student", False))
    t_model = configuration.make_model(tconf, spec, process, latent=latent)
    abstract = jax.eval_shape(lambda: train.init_params(t_model, 0))
    sig = student_signature(tconf, spec) if latent else configuration.model_signature(tconf, spec)
    t_params, _ = train.load_params(config.teacher.workdir, abstract, sig)
    teacher = network_teacher(t_model, t_params, config.teacher.num_latents)
    if latent:  # next round: a student of ours starts from itself
      return (config, spec, source, process, student_model, teacher,
              jax.tree.map(jnp.copy, t_params))
    params = networks.student_params_from_teacher(t_params, params)
  params = break_symmetry(params, jax.random.key(config.seed + 1), config.distill.latent_init_scale)
  # Own buffers: the train step donates the student's state, and the teacher
  # (frozen) must not lose the arrays they would otherwise share.
  params = jax.tree.map(jnp.copy, params)
  return config, spec, source, process, student_model, teacher, params


def break_symmetry(params, key, scale: float):
  """Gives the latent path's zero-initialised last projection N(0, scale^2) weights.

  With scale 0 the student equals its teacher exactly at step 0, but that
  point is a saddle of every Di4C term: when all components are the same
  product, d C / d lp_j is identical for every j and vanishes in
  expectation, so nothing pushes the components apart (measured on a tiny
  family: 1500 Adam steps of pure mixture maximum likelihood from scales
  0, 0.01 and 0.03 never left the product's likelihood; from 0.1 the
  one-step TV fell from 0.42 to 0.13). The default 0.1 starts the student
  near, not at, the teacher; set config.distill.latent_init_scale=0 for the
  exact start.
  """
  if scale == 0:
    return params
  params = jax.tree.map(lambda a: a, params)  # a copy we may edit
  kernel = params[networks.LATENT_MODULE]["dense_out"]["kernel"]
  params[networks.LATENT_MODULE]["dense_out"]["kernel"] = scale * jax.random.normal(
      key, kernel.shape, kernel.dtype)
  return params


def student_signature(config, spec) -> dict:
  return dict(configuration.model_signature(config, spec), latent=True)


def distill_and_evaluate(config, workdir: str):
  """Trains a mixture student by Di4C; checkpoints and samples in workdir."""
  config, spec, source, process, model, teacher, params = setup_distillation(config)
  t = config.train
  mesh = train.make_mesh()
  batcher = train.make_batcher(config, spec, source)
  loss_fn = di4c_loss(student_fn(model), teacher, process, config.distill,
                      config.model.label_dropout, model.num_classes)
  optimizer = train.make_optimizer(config.optim, t.num_steps)
  state = train.init_state(params, optimizer)
  step_fn = train.make_step(loss_fn, optimizer, config.optim.ema_decay)
  train._write_config(workdir, config)
  log.info("distilling %s into a mixture student (L=%d, preset %s)", teacher.description,
           config.distill.num_latents, config.distill.preset)
  hook = train._sample_hook(config, spec, process, samplers.mixture(mixture_denoiser(model)),
                            workdir, "student")
  loop = train.LoopConfig(workdir=workdir, num_steps=t.num_steps, seed=config.seed,
                          log_every=t.log_every, ckpt_every=t.ckpt_every, keep=t.keep,
                          sample_every=t.sample_every, desc="distill")
  return train.fit(loop, state, step_fn, batcher, mesh, student_signature(config, spec), hook,
                   extra_meta={"kind": "student", "data": spec.name}, frozen=teacher.frozen)


def mixture_denoiser(model, labels=None):
  """`(params, x, t, lam) -> logits` of a student, for samplers.mixture."""
  def fn(params, x, t, lam):
    kw = {"labels": labels} if labels is not None and model.num_classes else {}
    return model.apply({"params": params}, x, t, lam=lam, **kw)
  return fn


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished teacher or student run, loaded for sampling or evaluation."""
  config: ml_collections.ConfigDict
  spec: pipeline.DataSpec
  process: Any
  model: networks.Denoiser
  params: Any
  is_student: bool

  def denoiser(self, labels=None) -> Callable:
    """The sampler's `(params, x, t, key) -> logits`: product or mixture."""
    if self.is_student:
      return samplers.mixture(mixture_denoiser(self.model, labels))
    return train.product_denoiser(self.model, labels)


def load_run(workdir: str, ema: bool = True) -> Run:
  """Loads the config and newest good parameters of a train/distill workdir."""
  config = read_run_config(workdir)
  spec, _ = pipeline.load(config.data, "train")
  process = configuration.make_process(config, spec)
  is_student = bool(config.get("is_student", False))
  model = configuration.make_model(config, spec, process, latent=is_student)
  abstract = jax.eval_shape(lambda: train.init_params(model, 0))
  sig = student_signature(config, spec) if is_student else configuration.model_signature(config, spec)
  params, _ = train.load_params(workdir, abstract, sig, ema=ema)
  return Run(config, spec, process, model, params, is_student)


def quick_distill(config, num_steps: int | None = None, chunk: int = 100, log_every: int = 0):
  """Distillation without checkpoints: `chunk` steps per jitted lax.scan.

  For small experiments, notebooks and tests, where the Python loop of
  `distill_and_evaluate` (logging, checkpointing) would dominate the run
  time. Single device. Returns (setup, params, losses [num_steps]) where
  setup = (config, spec, source, process, model, teacher).
  """
  config, spec, source, process, model, teacher, params = setup_distillation(config)
  num_steps = num_steps or config.train.num_steps
  loss_fn = di4c_loss(student_fn(model), teacher, process, config.distill,
                      config.model.label_dropout, model.num_classes)
  opt = train.make_optimizer(config.optim, num_steps)
  step = train.make_step(loss_fn, opt, config.optim.ema_decay)
  state = train.init_state(params, opt)
  batcher = pipeline.Batcher(source.tokens, source.labels, config.train.batch_size,
                             seed=config.seed, vocab_size=spec.vocab_size)

  @jax.jit
  def run(state, tokens, labels, keys):
    def body(s, xs):
      tok, lab, key = xs
      s, m = step(s, {"tokens": tok, "labels": lab}, key, teacher.frozen)
      return s, m["loss"]
    return jax.lax.scan(body, state, (tokens, labels, keys))

  root, seen = jax.random.key(config.seed), []
  for lo in range(0, num_steps, chunk):
    n = min(chunk, num_steps - lo)
    batches = [batcher.batch(j) for j in range(lo, lo + n)]
    tokens = jnp.stack([b["tokens"] for b in batches])
    labels = jnp.stack([b["labels"] for b in batches])
    keys = jax.vmap(lambda j: jax.random.fold_in(root, j))(jnp.arange(lo, lo + n))
    state, losses_seen = run(state, tokens, labels, keys)
    losses_seen = np.asarray(losses_seen)
    if not np.isfinite(losses_seen).all():
      raise train.NonFiniteError(f"non-finite Di4C loss between steps {lo + 1} and {lo + n}")
    seen.append(losses_seen)
    if log_every and (lo + n) % log_every == 0:
      log.info("quick_distill step %d/%d loss=%.4g", lo + n, num_steps, losses_seen[-1])
  return (config, spec, source, process, model, teacher), state.params, np.concatenate(seen)
