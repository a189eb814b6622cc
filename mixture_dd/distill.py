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
    # tauLDR / CIFAR-10: every example gets both terms; a fresh x_delta per
    # (example, latent) at delta = 0.01 w.p. 1/2, else U[0.01, 0.02].
    "tauldr": dict(num_latents=16, t_sampling="uniform", t_min=0.01, t_offset_by_delta=True,
                   delta="loguniform", delta_lo=1e-3, delta_hi=1e-2, delta_frac=0.5,
                   distil_mode="separate", distil_lo=0.01, distil_hi=0.02, distil_p_lo=0.5,
                   distil_threshold=0.0, distil_weight=1.0, alpha_scale=1.0, data_weight=0.0,
                   marginal_weight=1.0, small_t_prob=0.0, small_t_max=0.0,
                   teacher_step="analytic", confidence_temperature=0.0),
    # MaskGIT / ImageNet: progress r = 1 - t; distil on r >= 0.95 with the same
    # x_t; the consistency target's teacher step is MaskGIT's confidence step.
    "maskgit": dict(num_latents=32, t_sampling="uniform", t_min=0.0, t_offset_by_delta=False,
                    delta="const", delta_lo=0.05, delta_hi=0.05, delta_frac=0.5,
                    distil_mode="same", distil_lo=0.0, distil_hi=0.0, distil_p_lo=0.0,
                    distil_threshold=0.05, distil_weight=20.0, alpha_scale=0.1, data_weight=0.0,
                    marginal_weight=1.0, small_t_prob=0.0, small_t_max=0.0,
                    teacher_step="confidence", confidence_temperature=4.5),
    # SDTT / OpenWebText: one t per batch, 30 % of batches near the data end.
    "sdtt": dict(num_latents=16, t_sampling="per_batch", t_min=0.0, t_offset_by_delta=False,
                 delta="min_frac", delta_lo=1.0 / 1024, delta_hi=1.0 / 1024, delta_frac=0.5,
                 distil_mode="same", distil_lo=0.0, distil_hi=0.0, distil_p_lo=0.0,
                 distil_threshold=0.02, distil_weight=1.0, alpha_scale=0.1, data_weight=0.0,
                 marginal_weight=1.0, small_t_prob=0.3, small_t_max=0.02,
                 teacher_step="analytic", confidence_temperature=0.0),
}
# How the student starts from its teacher (see `start_student`).
STUDENT_STARTS = ("exact", "gate", "fan_in", "centred", "normal")
DEFAULT_START = "centred"
TEACHER_STEPS = ("analytic", "confidence")
T_SAMPLINGS = ("uniform", "per_batch")
DELTAS = ("loguniform", "const", "min_frac")
DISTIL_MODES = ("separate", "same")


def preset(name: str, **overrides) -> ml_collections.ConfigDict:
  """The `distill` config section of a reference setup, with overrides."""
  if name not in PRESETS:
    raise ValueError(f"config.distill.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
  c = ml_collections.ConfigDict(dict(PRESETS[name], preset=name, latent_chunks=1,
                                     student_start=DEFAULT_START, latent_init_scale=1.0))
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
  req(d.student_start in STUDENT_STARTS, "student_start",
      f"{d.student_start!r}; choose one of {STUDENT_STARTS}")
  req(d.student_start not in ("fan_in", "centred", "normal") or d.latent_init_scale > 0,
      "latent_init_scale",
      f"student_start={d.student_start!r} needs latent_init_scale > 0 (0 is the exact start: "
      "use student_start='exact')")
  req(d.teacher_step in TEACHER_STEPS, "teacher_step",
      f"{d.teacher_step!r}; choose one of {TEACHER_STEPS}")
  req(0.0 <= d.distil_p_lo <= 1.0, "distil_p_lo", f"must be in [0, 1], got {d.distil_p_lo}")
  for f in ("distil_weight", "data_weight", "alpha_scale", "marginal_weight",
            "confidence_temperature"):
    req(d[f] >= 0, f, f"must be >= 0, got {d[f]}")


# ---------------------------------------------------------------------------
# Times and gates.
# ---------------------------------------------------------------------------


def sample_times(key, batch: int, d):
  """Per-example times and gates of a preset: a dict of `[batch]` arrays.

  t: the consistency / data time; u = t - Delta; distil_t: the time of the
  distillation term ("same" mode: t itself, `[batch]`; "separate" mode: one
  time per (example, latent), `[batch, num_latents]`: distil_lo with
  probability distil_p_lo, else U[distil_lo, distil_hi]); w_distil,
  w_consis: 0/1 gates (masks, never Python control flow); alpha: the
  correlation data term's weight.
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
    k_u, k_lo = jax.random.split(k_dist)
    shape = (batch, d.num_latents)
    distil_t = jnp.where(jax.random.bernoulli(k_lo, d.distil_p_lo, shape), d.distil_lo,
                         jax.random.uniform(k_u, shape, minval=d.distil_lo, maxval=d.distil_hi))
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
  """A frozen teacher.

  fn(frozen, x_t [B, D], t [B], labels [B] | None, key) -> logits [B, D, S]:
  the teacher's per-token marginals p_{0|t}, used by every KL term.
  component_fn(frozen, x_t [N, D], t [N], labels [N] | None, lam [N]) ->
  logits: only for a mixture teacher (di4c^2): the component at latent lam.
  The consistency target's teacher step from each latent copy of x_t then
  draws its own teacher latent and steps with that component (a true
  mixture step), instead of stepping with the product of the averaged
  marginals, which would lose the teacher's correlations.
  """
  fn: Callable
  frozen: Any
  description: str
  component_fn: Callable | None = None


def network_teacher(model: networks.Denoiser, params, num_latents: int = 16) -> Teacher:
  """Our network as a teacher: a product, or (latent=True) a mixture teacher.

  A mixture teacher's marginals average its components' probabilities over
  `num_latents` stratified latents (di4c^2: a student teaches the next round).
  """
  def kw(labels):
    return {"labels": labels} if model.num_classes and labels is not None else {}

  if not model.latent:
    def fn(frozen, x, t, labels, key):
      return model.apply({"params": frozen}, x, t, **kw(labels))
    return Teacher(fn, params, "product network")

  def component(frozen, x, t, labels, lam):
    return model.apply({"params": frozen}, x, t, lam=lam, **kw(labels))

  def mix(frozen, x, t, labels, key):
    b = x.shape[0]
    offs = jax.random.uniform(key, (b, 1))
    lam = jnp.mod(offs + jnp.arange(num_latents) / num_latents, 1.0)  # [B, L]
    rep = lambda a: None if a is None else jnp.repeat(a, num_latents, axis=0)
    lp = jax.nn.log_softmax(component(frozen, rep(x), rep(t), rep(labels), lam.reshape(-1)))
    return losses.mixture_log_marginals(lp.reshape((b, num_latents) + lp.shape[1:]))
  return Teacher(mix, params, f"mixture network (L={num_latents})", component)


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

  Per example: distil_weight * w_distil * distillation + w_consis *
  consistency + marginal_weight * KL(teacher_t || mixture marginal_t) +
  data_weight * alpha_t * (-C(x0)). The teacher-marginal KL is on at every t
  in every preset (as in the official code); data_weight only switches the
  correlation part on real x0 ("di4c" = 0, "di4c-d" = 1).

  Gradients flow only through the student's passes at t (and, in
  "separate" mode, at the distillation times); the teacher, the x_u draws,
  the student at u and the x0 targets are all stop-gradient.
  """
  num_l = d.num_latents
  chunks = d.latent_chunks

  def rep(a):
    return None if a is None else jnp.repeat(a, num_l, axis=0)

  def student_lp(params, x, t, lam, labels, key, train, remat=True):
    """Component log-probs `[B, L, D, S]` at per-latent inputs.

    x `[B, L, D]`, t and lam `[B, L]`, labels `[B]`. With latent_chunks =
    c > 1 the L latents run as c sequential micro-batches of L / c
    (lax.map), each rematerialised in the backward pass when `remat`, so
    activation memory scales with B x L / c instead of B x L. The values,
    and so the gradients, are those of the unchunked pass.
    """
    b, per = x.shape[0], num_l // chunks

    def one(x_c, t_c, lam_c, key_c):
      r = lambda a: None if a is None else jnp.repeat(a, per, axis=0)
      logits = student(params, x_c.reshape((b * per,) + x_c.shape[2:]), t_c.reshape(-1),
                       lam_c.reshape(-1), r(labels), key_c, train)
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return lp.reshape((b, per) + lp.shape[1:])

    if chunks == 1:
      return one(x, t, lam, key)
    fn = jax.checkpoint(one) if remat else one
    split = lambda a: jnp.moveaxis(a.reshape((b, chunks, per) + a.shape[2:]), 1, 0)
    out = jax.lax.map(lambda a: fn(*a), (split(x), split(t), split(lam),
                                         jax.random.split(key, chunks)))
    return jnp.moveaxis(out, 0, 1).reshape((b, num_l) + out.shape[3:])

  def per_latent(a):  # [B, ...] -> [B, L, ...]
    return jnp.broadcast_to(a[:, None], (a.shape[0], num_l) + a.shape[1:])

  def loss_fn(params, batch, key, frozen):
    x0 = batch["tokens"]
    b, length = x0.shape
    keys = dict(zip(["times", "xt", "teacher", "lam_t", "drop_t", "step", "lam_u", "draw",
                     "xd", "teacher_d", "lam_d", "drop_d", "labels", "mu", "drop_u"],
                    jax.random.split(key, 15)))
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
    lp = student_lp(params, per_latent(x_t), per_latent(t), lam, labels, keys["drop_t"], True)

    # Consistency: one teacher step t -> u from every latent copy of x_t,
    # then the student at u (eval mode, no gradient) as the target.
    x_rep, t_rep, u_rep = rep(x_t), rep(t), rep(u)
    if teacher.component_fn is None:
      step_logits = rep(teacher_logits)
    else:  # a mixture teacher: each copy steps with its own teacher latent
      mu = jax.random.uniform(keys["mu"], (b * num_l,))
      step_logits = jax.lax.stop_gradient(
          teacher.component_fn(frozen, x_rep, t_rep, rep(labels), mu))
    if d.teacher_step == "confidence":
      n_after = jnp.round(length * (1.0 - process.alpha(u_rep))).astype(jnp.int32)
      x_u = samplers.confidence_step(keys["step"], process, x_rep, step_logits, n_after,
                                     d.confidence_temperature * t_rep)
    else:
      x_u = samplers.analytic_step(keys["step"], process, x_rep, t_rep, u_rep, step_logits)
    x_u = jax.lax.stop_gradient(x_u.reshape(b, num_l, length))
    lam_u = jax.random.uniform(keys["lam_u"], (b, num_l))
    q = jax.lax.stop_gradient(student_lp(jax.lax.stop_gradient(params), x_u, per_latent(u),
                                         lam_u, labels, keys["drop_u"], False, remat=False))
    x0_i = categorical.sample(keys["draw"], q)  # [B, L, D]: x0^(i) ~ q_i
    consis = losses.consistency_term(lp, q, x0_i)

    if d.distil_mode == "same":
      distil = losses.distillation_term(teacher_lp, lp)
    else:  # a fresh x_delta per (example, latent)
      dt = tm["distil_t"]  # [B, L]
      x_d = process.sample_xt(keys["xd"], rep(x0), dt.reshape(-1))
      t_lp = jax.nn.log_softmax(jax.lax.stop_gradient(
          teacher.fn(frozen, x_d, dt.reshape(-1), rep(labels), keys["teacher_d"])
      ).astype(jnp.float32), -1)
      lam_d = jax.random.uniform(keys["lam_d"], (b, num_l))
      lp_d = student_lp(params, x_d.reshape(b, num_l, length), dt, lam_d, labels, keys["drop_d"],
                        True)
      distil = losses.distillation_term(t_lp.reshape(lp_d.shape), lp_d)
    marginal = losses.marginal_term(lp, teacher_lp)
    data_corr = losses.data_correlation_term(lp, x0, tm["alpha"])

    per_example = (d.distil_weight * tm["w_distil"] * distil + tm["w_consis"] * consis
                   + d.marginal_weight * marginal + d.data_weight * data_corr)
    loss = jnp.mean(per_example)
    gate_mean = lambda v, w: jnp.sum(w * v) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {
        "distillation": gate_mean(distil, tm["w_distil"]),
        "consistency": gate_mean(consis, tm["w_consis"]),
        "marginal": jnp.mean(marginal),
        "data_correlation": jnp.mean(data_corr),
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
  params = start_student(params, jax.random.key(config.seed + 1), config.distill.student_start,
                         config.distill.latent_init_scale)
  # Own buffers: the train step donates the student's state, and the teacher
  # (frozen) must not lose the arrays they would otherwise share.
  params = jax.tree.map(jnp.copy, params)
  return config, spec, source, process, student_model, teacher, params


def start_student(params, key, start: str, scale: float = 0.0):
  """The latent path's start for a student copied from its teacher.

  * "exact": the latent path adds exactly 0 (its last projection is zero):
    the student IS the teacher at step 0.
  * "gate": also exactly the teacher (a zero-initialised per-channel gate
    multiplies a default-initialised latent embedding, see
    `networks.LatentEmbed`); needs a model built with latent_entry="gate".
  * "fan_in": the last projection gets N(0, scale^2 / fan_in) weights: the
    latent embedding's RMS is about `scale` times that of its input, at any
    width.
  * "centred": as "fan_in" on a centred latent embedding (latent_entry
    "centred"): the mixture's marginals move only at second order.
  * "normal": N(0, scale^2) weights, no fan-in scaling (the perturbation
    grows with width; kept to reproduce the first build's numbers).
  """
  if start in ("exact", "gate"):
    return params
  params = jax.tree.map(lambda a: a, params)  # a copy we may edit
  kernel = params[networks.LATENT_MODULE]["dense_out"]["kernel"]
  std = scale if start == "normal" else scale / np.sqrt(kernel.shape[0])
  params[networks.LATENT_MODULE]["dense_out"]["kernel"] = std * jax.random.normal(
      key, kernel.shape, kernel.dtype)
  return params


def marginal_kl(teacher: Teacher, model: networks.Denoiser, params, process, tokens, key,
                num_latents: int = 64) -> float:
  """E KL(teacher_t || student mixture marginal_t) per token, in nats.

  Over x0 = the rows of `tokens` `[n, D]`, stratified t ~ U[0, 1] and
  x_t ~ q_t(. | x0); the student's marginals average `num_latents`
  stratified latents. 0 for a student that starts exactly at its teacher.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  n, length = tokens.shape
  # The student's mixture marginals are those it would give as a di4c^2 teacher.
  student = network_teacher(model, params, num_latents)

  @jax.jit
  def kl(params, frozen, key):
    k_t, k_x, k_teacher, k_lam = jax.random.split(key, 4)
    t = losses.stratified_times(k_t, n)
    x_t = process.sample_xt(k_x, tokens, t)
    t_lp = jax.nn.log_softmax(teacher.fn(frozen, x_t, t, None, k_teacher), -1)
    s_lp = student.fn(params, x_t, t, None, k_lam)
    return jnp.sum(losses.kl_categorical(t_lp, s_lp)) / (n * length)
  return float(kl(params, teacher.frozen, key))


def student_signature(config, spec) -> dict:
  return dict(configuration.model_signature(config, spec), latent=True,
              latent_entry=configuration.latent_entry(config))


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
  step_fn = train.make_step(loss_fn, optimizer, config.optim.ema_decay, config.optim.ema_warmup)
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


def load_run(workdir: str, ema: bool | None = None) -> Run:
  """Loads the config and newest good parameters of a train/distill workdir.

  ema=None follows the run's config.train.eval_weights ("ema" or "raw").
  """
  config = read_run_config(workdir)
  spec, _ = pipeline.load(config.data, "train")
  process = configuration.make_process(config, spec)
  is_student = bool(config.get("is_student", False))
  model = configuration.make_model(config, spec, process, latent=is_student)
  abstract = jax.eval_shape(lambda: train.init_params(model, 0))
  sig = student_signature(config, spec) if is_student else configuration.model_signature(config, spec)
  if ema is None:
    ema = config.train.get("eval_weights", "ema") == "ema"
  params, _ = train.load_params(workdir, abstract, sig, ema=ema)
  return Run(config, spec, process, model, params, is_student)


def quick_distill(config, num_steps: int | None = None, chunk: int = 100, log_every: int = 0):
  """Distillation without checkpoints (`train.fit_scanned`), for small
  experiments, notebooks and tests. Single device. Returns (setup, params,
  losses [num_steps]) where setup = (config, spec, source, process, model,
  teacher); params are the EMA or raw weights as config.train.eval_weights.
  """
  config, spec, source, process, model, teacher, params = setup_distillation(config)
  num_steps = num_steps or config.train.num_steps
  loss_fn = di4c_loss(student_fn(model), teacher, process, config.distill,
                      config.model.label_dropout, model.num_classes)
  opt = train.make_optimizer(config.optim, num_steps)
  step = train.make_step(loss_fn, opt, config.optim.ema_decay, config.optim.ema_warmup)
  batcher = pipeline.Batcher(source.tokens, source.labels, config.train.batch_size,
                             seed=config.seed, vocab_size=spec.vocab_size)
  state, seen = train.fit_scanned(train.init_state(params, opt), step, batcher, num_steps,
                                  config.seed, teacher.frozen, chunk, log_every, "quick_distill")
  out = state.ema_params if config.train.eval_weights == "ema" else state.params
  return (config, spec, source, process, model, teacher), out, seen
