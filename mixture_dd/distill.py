"""Di4C distillation: a product (or mixture) teacher into a mixture student.

The pieces, in the order a distillation step uses them:
  * `sample_times`: t, u = t - Delta and the per-example gates of a preset
    (tauLDR, MaskGIT, SDTT: docs/method.md section 4's table; the presets live
    with the config schema, `configuration.distill_preset`);
  * `Teacher`: any `denoisers.Denoiser` with its frozen parameters: our
    network (product), a distilled student (a mixture teacher for "di4c^2":
    its components' probabilities averaged over L latents), the exact ideal
    denoiser of a tiny family or of the Markov chain, or a user function;
  * `di4c_loss`: the distillation, consistency and data terms;
  * `setup_student` / `distill_student`: a run from a config, handed to the
    one trainer (trainer.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import (
  categorical,
  checkpoints,
  configuration,
  denoisers,
  exact,
  losses,
  markov_exact,
  networks,
  samplers,
  train_step,
  trainer,
  visualize,
)
from mixture_dd.data import markov, pipeline
from mixture_dd.denoisers import Denoiser

log = logging.getLogger("mixture_dd")

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
    delta = jnp.exp(
      jax.random.uniform(k_d, (batch,), minval=np.log(d.delta_lo), maxval=np.log(d.delta_hi))
    )
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
    distil_t = jnp.where(
      jax.random.bernoulli(k_lo, d.distil_p_lo, shape),
      d.distil_lo,
      jax.random.uniform(k_u, shape, minval=d.distil_lo, maxval=d.distil_hi),
    )
    w_distil = jnp.ones((batch,))
    w_consis = jnp.ones((batch,))
  else:
    distil_t = t
    w_distil = (t < d.distil_threshold).astype(jnp.float32)
    w_consis = 1.0 - w_distil
  alpha = d.alpha_scale * jax.nn.sigmoid(20.0 * (t - 0.5))
  return dict(t=t, u=u, distil_t=distil_t, w_distil=w_distil, w_consis=w_consis, alpha=alpha)


def confidence_step_temperature(d, t):
  """Gumbel temperature of the teacher's MaskGIT confidence step at time t `[...]`.

  The MaskGIT sampler with T = d.confidence_steps steps starts step k at
  progress r = 1 - t = k / T with temperature c (1 - k / (T - 1)), c =
  d.confidence_temperature; the official training step (Trainer/vit.py)
  interpolates that as c (1 - r T / (T - 1)). That is below c (1 - r), and it
  turns negative for r > (T - 1) / T, which the sampler never reaches (its
  last step has temperature 0) and where a negative factor would flip the
  Gumbel noise's sign instead of removing it: clipped at 0 here (the official
  code leaves it negative, at most c / (T - 1) in size).
  """
  ramp = d.confidence_steps / (d.confidence_steps - 1.0)
  return d.confidence_temperature * jnp.maximum(1.0 - (1.0 - t) * ramp, 0.0)


# ---------------------------------------------------------------------------
# Teachers.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher.

  denoise: a `denoisers.Denoiser` whose logits are the teacher's per-token
  marginals p_{0|t} (used by every KL term), called with `frozen` as its
  params. component: only for a mixture teacher (di4c^2), the denoiser of
  one component (takes lam). The consistency target's teacher step from each
  latent copy of x_t then draws its own teacher latent and steps with that
  component (a true mixture step), instead of stepping with the product of
  the averaged marginals, which would lose the teacher's correlations.
  provenance: what a student's checkpoints record about this teacher (a
  resumed distillation must find the same; a JSON-able dict). A teacher of
  one's own (config.teacher.kind "user") left without one gets the checksum
  of `frozen` (`user_teacher`): give one that names the function's version
  too if the function may change while its parameters do not.

  Any function is a teacher: Teacher(denoisers.from_function(fn), frozen,
  "my model") with fn(frozen, x_t `[B, D]`, t `[B]`) -> logits `[B, D, S]`
  over the S data values (no mask entry).
  """

  denoise: Denoiser
  frozen: Any
  description: str
  component: Denoiser | None = None
  provenance: dict | None = None


def network_teacher(
  model: networks.Transformer, params, num_latents: int = 16, provenance: dict | None = None
) -> Teacher:
  """Our network as a teacher: a product, or (latent=True) a mixture teacher
  whose marginals average its components over `num_latents` stratified
  latents (di4c^2: a student teaches the next round)."""
  net = denoisers.from_network(model)
  if not model.latent:
    return Teacher(net, params, "product network", provenance=provenance)
  return Teacher(
    denoisers.mixture_marginals(net, num_latents),
    params,
    f"mixture network (L={num_latents})",
    net,
    provenance,
  )


def ideal_teacher(process, probs, length: int) -> Teacher:
  """The exact ideal product denoiser of a tiny family (exact.py)."""
  probs = jnp.asarray(probs, jnp.float32)
  return Teacher(
    denoisers.ideal(process, length),
    probs,
    "exact ideal product denoiser",
    provenance={"kind": "ideal", "checksum": checkpoints.checksum(probs)},
  )


def chain_teacher(process, init, trans) -> Teacher:
  """The exact ideal product denoiser of a first-order Markov chain (init `[S]`,
  trans `[S, S]`), by forward-backward (markov_exact.py)."""
  params = markov_exact.chain_params(init, trans)
  return Teacher(
    markov_exact.denoiser(process),
    params,
    "exact ideal product denoiser (Markov chain, forward-backward)",
    provenance={"kind": "ideal", "checksum": checkpoints.checksum(params)},
  )


def user_teacher(teacher: Teacher, spec, process) -> Teacher:
  """A teacher passed in (config.teacher.kind "user"), checked on a probe
  batch and given its provenance (the checksum of its frozen parameters
  unless it brings one).

  The probe traces the denoiser on a batch x_t `[2, D]` at t = 0.5 without
  running it (jax.eval_shape): its logits must be `[2, D, S]`, S =
  process.vocab_size, the data's vocabulary (the student's output size).
  """
  if not isinstance(teacher, Teacher):
    raise TypeError(
      f"teacher must be a distill.Teacher, got {type(teacher).__name__}; wrap a plain "
      "fn(frozen, x_t, t) -> logits as distill.Teacher(denoisers.from_function(fn), frozen, "
      "'a description')"
    )
  b, length, size = 2, spec.length, process.vocab_size
  t = jnp.full((b,), 0.5, jnp.float32)
  x_t = process.sample_xt(jax.random.key(0), jnp.zeros((b, length), jnp.int32), t)
  labels = jnp.zeros((b,), jnp.int32) if spec.num_classes else None
  out = jax.eval_shape(
    lambda f, x, tt, k: teacher.denoise(f, x, tt, k, labels=labels),
    teacher.frozen,
    x_t,
    t,
    jax.random.key(0),
  )
  name = f"teacher {teacher.description!r}"
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 3 or tuple(shape[:2]) != (b, length):
    raise ValueError(
      f"{name} returns {shape if shape is not None else type(out).__name__} for x_t of shape "
      f"{(b, length)}; a denoiser returns logits [batch, D, S] = [{b}, {length}, {size}]"
    )
  if shape[2] != size:
    where = (
      "config.data.vocab_size: the largest token + 1 unless set"
      if spec.name == pipeline.ARRAY
      else f"data set {spec.name}, or config.process.vocab_size"
    )
    mask = (
      f" It looks like it includes the mask state (id {size}): drop that logit."
      if shape[2] == size + 1 and process.mask_id is not None
      else ""
    )
    fix = (
      f"set config.data.vocab_size={shape[2]}"
      if spec.name == pipeline.ARRAY
      else f"set config.process.vocab_size={shape[2]}"
    )
    raise ValueError(
      f"{name} returns {shape[2]} logits per token, but the data's vocabulary has {size} "
      f"values ({where}).{mask} Make the teacher return [batch, D, {size}] logits over the "
      f"data values, or, if the vocabulary really has {shape[2]} values (tokens that never "
      f"use the top ones), {fix}"
    )
  provenance = teacher.provenance or {
    "kind": "user",
    "checksum": checkpoints.checksum(teacher.frozen),
  }
  return dataclasses.replace(teacher, provenance=provenance)


# ---------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------


def di4c_loss(
  student: Denoiser,
  teacher: Teacher,
  process,
  d,
  label_dropout: float = 0.0,
  num_classes: int = 0,
  target: Denoiser | None = None,
):
  """`loss_fn(params, batch, key, frozen) -> (loss, metrics)` of docs/method.md sec. 4.

  `student` is the mixture student's component (a denoiser taking lam) in
  train mode; `target` the same in eval mode, for the consistency target
  (defaults to `student`).

  Per example: distil_weight * w_distil * distillation + w_consis *
  consistency + marginal_weight * KL(teacher_t || mixture marginal_t) +
  data_weight * alpha_t * (-C(x0)). The teacher-marginal KL is on at every t
  in every preset (as in the official code); data_weight only switches the
  correlation part on real x0 ("di4c" = 0, "di4c-d" = 1).

  Gradients flow only through the student's passes at t (and, in
  "separate" mode, at the distillation times); the teacher, the x_u draws,
  the student at u and the x0 targets are all stop-gradient.

  Latents are `[B, L]` uniforms, or `[B, L, k]` for a student with
  latent_dim k > 1 (`denoisers.latent_dim(student)`; a mixture teacher's
  own latents have its own k), each drawn from its own key.
  """
  num_l = d.num_latents
  chunks = d.latent_chunks
  target = student if target is None else target
  k_student = denoisers.latent_dim(student)

  def rep(a):
    return None if a is None else jnp.repeat(a, num_l, axis=0)

  def student_lp(params, x, t, lam, labels, key, train, remat=True):
    """Component log-probs `[B, L, D, S]` at per-latent inputs.

    x `[B, L, D]`, t `[B, L]`, lam `[B, L]` or `[B, L, k]`, labels `[B]`. With latent_chunks =
    c > 1 the L latents run as c sequential micro-batches of L / c
    (lax.map), each rematerialised in the backward pass when `remat`, so
    activation memory scales with B x L / c instead of B x L. The values,
    and so the gradients, are those of the unchunked pass.
    """
    b, per = x.shape[0], num_l // chunks

    def one(x_c, t_c, lam_c, key_c):
      r = lambda a: None if a is None else jnp.repeat(a, per, axis=0)
      net = student if train else target
      logits = net(
        params,
        x_c.reshape((b * per,) + x_c.shape[2:]),
        t_c.reshape(-1),
        key_c,
        lam=lam_c.reshape((b * per,) + lam_c.shape[2:]),
        labels=r(labels),
      )
      lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return lp.reshape((b, per) + lp.shape[1:])

    if chunks == 1:
      return one(x, t, lam, key)
    fn = jax.checkpoint(one) if remat else one
    split = lambda a: jnp.moveaxis(a.reshape((b, chunks, per) + a.shape[2:]), 1, 0)
    out = jax.lax.map(
      lambda a: fn(*a), (split(x), split(t), split(lam), jax.random.split(key, chunks))
    )
    return jnp.moveaxis(out, 0, 1).reshape((b, num_l) + out.shape[3:])

  def per_latent(a):  # [B, ...] -> [B, L, ...]
    return jnp.broadcast_to(a[:, None], (a.shape[0], num_l) + a.shape[1:])

  def loss_fn(params, batch, key, frozen):
    x0 = batch["tokens"]
    b, length = x0.shape
    keys = dict(
      zip(
        [
          "times",
          "xt",
          "teacher",
          "lam_t",
          "drop_t",
          "step",
          "lam_u",
          "draw",
          "xd",
          "teacher_d",
          "lam_d",
          "drop_d",
          "labels",
          "mu",
          "drop_u",
        ],
        jax.random.split(key, 15),
      )
    )
    labels = batch.get("labels") if num_classes else None
    # The same dropped labels go to the teacher and the student.
    labels = losses.drop_labels(keys["labels"], labels, label_dropout, num_classes)
    tm = sample_times(keys["times"], b, d)
    t, u = tm["t"], tm["u"]
    x_t = process.sample_xt(keys["xt"], x0, t)
    teacher_logits = jax.lax.stop_gradient(
      teacher.denoise(frozen, x_t, t, keys["teacher"], labels=labels)
    )
    teacher_lp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
    lam = denoisers.draw_latents(keys["lam_t"], (b, num_l), k_student)
    lp = student_lp(params, per_latent(x_t), per_latent(t), lam, labels, keys["drop_t"], True)

    # Consistency: one teacher step t -> u from every latent copy of x_t,
    # then the student at u (eval mode, no gradient) as the target.
    x_rep, t_rep, u_rep = rep(x_t), rep(t), rep(u)
    if teacher.component is None:
      step_logits = rep(teacher_logits)
    else:  # a mixture teacher: each copy steps with its own teacher latent
      mu = denoisers.draw_latents(keys["mu"], (b * num_l,), denoisers.latent_dim(teacher.component))
      step_logits = jax.lax.stop_gradient(
        teacher.component(frozen, x_rep, t_rep, keys["mu"], lam=mu, labels=rep(labels))
      )
    if d.teacher_step == "confidence":
      n_after = jnp.round(length * (1.0 - process.alpha(u_rep))).astype(jnp.int32)
      x_u = samplers.confidence_step(
        keys["step"], process, x_rep, step_logits, n_after, confidence_step_temperature(d, t_rep)
      )
    else:
      x_u = samplers.analytic_step(keys["step"], process, x_rep, t_rep, u_rep, step_logits)
    x_u = jax.lax.stop_gradient(x_u.reshape(b, num_l, length))
    lam_u = denoisers.draw_latents(keys["lam_u"], (b, num_l), k_student)
    q = jax.lax.stop_gradient(
      student_lp(
        jax.lax.stop_gradient(params),
        x_u,
        per_latent(u),
        lam_u,
        labels,
        keys["drop_u"],
        False,
        remat=False,
      )
    )
    x0_i = categorical.sample(keys["draw"], q)  # [B, L, D]: x0^(i) ~ q_i
    consis = losses.consistency_term(lp, q, x0_i)

    if d.distil_mode == "same":
      distil = losses.distillation_term(teacher_lp, lp)
    else:  # a fresh x_delta per (example, latent)
      dt = tm["distil_t"]  # [B, L]
      x_d = process.sample_xt(keys["xd"], rep(x0), dt.reshape(-1))
      t_lp = jax.nn.log_softmax(
        jax.lax.stop_gradient(
          teacher.denoise(frozen, x_d, dt.reshape(-1), keys["teacher_d"], labels=rep(labels))
        ).astype(jnp.float32),
        -1,
      )
      lam_d = denoisers.draw_latents(keys["lam_d"], (b, num_l), k_student)
      lp_d = student_lp(
        params, x_d.reshape(b, num_l, length), dt, lam_d, labels, keys["drop_d"], True
      )
      distil = losses.distillation_term(t_lp.reshape(lp_d.shape), lp_d)
    marginal = losses.marginal_term(lp, teacher_lp)
    data_corr = losses.data_correlation_term(lp, x0, tm["alpha"])

    per_example = (
      d.distil_weight * tm["w_distil"] * distil
      + tm["w_consis"] * consis
      + d.marginal_weight * marginal
      + d.data_weight * data_corr
    )
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
# A distillation run from a config.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StudentSetup:
  """A distillation run's pieces: the resolved config, data, process, the
  student network, its teacher, its initial parameters and its loss."""

  config: Any
  spec: pipeline.DataSpec
  source: Any
  process: Any
  model: networks.Transformer
  teacher: Teacher
  params: Any
  loss_fn: Any


def _check_teacher_arg(kind: str, teacher: Teacher | None) -> None:
  """A teacher is passed in exactly when config.teacher.kind is "user"."""
  if (kind == "user") == (teacher is not None):
    return
  if teacher is not None:
    raise ValueError(
      f"a teacher= was passed, but config.teacher.kind={kind!r} names its teacher itself: "
      "set config.teacher.kind='user' (and leave config.teacher.workdir unset) to distil "
      "the teacher passed in, or drop teacher="
    )
  raise ValueError(
    "config.teacher.kind='user' needs the teacher itself: pass teacher=distill.Teacher(...) "
    "(a run does not store a user teacher's function: pass it again to resume)"
  )


def load_teacher(config, spec, process, teacher: Teacher | None = None) -> Teacher:
  """The teacher a resolved distillation config names, with its provenance.

  config.teacher.kind "user": `teacher` itself (`user_teacher` checks it);
  the other kinds take none.
  """
  _check_teacher_arg(config.teacher.kind, teacher)
  if teacher is not None:
    return user_teacher(teacher, spec, process)
  if config.teacher.kind == "ideal" and spec.name == "markov":
    # The chain the data set samples from (as builders.Markov makes it).
    return chain_teacher(process, *markov.make_chain(config.data.vocab_size, config.data.seed))
  if config.teacher.kind == "ideal":
    probs = exact.make_family(config.data.family, spec.vocab_size, spec.length, config.data.seed)
    return ideal_teacher(process, probs, spec.length)
  tconf = configuration.read_run_config(config.teacher.workdir)
  t_model = configuration.make_model(
    tconf, spec, process, latent=bool(tconf.get("is_student", False))
  )
  abstract = jax.eval_shape(lambda: train_step.init_params(t_model, 0))
  # The weights the teacher's run evaluates (its train.eval_weights): the EMA
  # of a teacher of ours, the raw weights of an SDTT/MaskGIT-preset student
  # teaching the next round (SDTT's di4c^2 loads the raw weights). A mixture
  # teacher's weights are also the next round's start (`setup_student`).
  ema = tconf.train.get("eval_weights", "ema") == "ema"
  t_params, meta = checkpoints.load_params(
    config.teacher.workdir, abstract, configuration.model_signature(tconf, spec), ema=ema
  )
  provenance = {
    "workdir": os.path.abspath(config.teacher.workdir),
    "step": int(meta["step"]),
    "checksum": checkpoints.checksum(t_params),
  }
  return network_teacher(t_model, t_params, config.teacher.num_latents, provenance)


def setup_student(config, teacher: Teacher | None = None, tokens=None, labels=None) -> StudentSetup:
  """The student's pieces from a distillation config (resolved and validated here).

  teacher: the teacher of config.teacher.kind "user", any `Teacher` (its
  logits checked on a probe batch: `user_teacher`). tokens `[N, D]` int
  (labels `[N]`): the data as an array instead of a data set (config.data.name
  "array", or unset); its length and vocabulary come from the array unless
  the config sets them (`pipeline.array_source`), and the resolved config
  records them, so that `runs.load_run` rebuilds the student without them.
  """
  _check_teacher_arg(config.teacher.kind, teacher)
  config = configuration.resolve(_name_array_data(config, tokens, labels))
  if config.data.name == pipeline.ARRAY:
    if tokens is None:
      raise ValueError(
        f"config.data.name={pipeline.ARRAY!r} is a token array: pass it, "
        "tokens=[N, D] (and labels=[N] if it has them)"
      )
    config.data, spec, source = pipeline.array_source(config.data, tokens, labels)
  else:
    spec, source = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  process.check_tokens(source.head(1000).tokens, f"data set {spec.name} tokens")
  model = configuration.make_model(config, spec, process, latent=True)
  teacher = load_teacher(config, spec, process, teacher)
  if config.teacher.kind == "network" and teacher.component is not None:
    params = teacher.frozen  # next round: a student of ours starts from itself
  else:
    if config.teacher.kind == "network":
      teacher_params = teacher.frozen
    else:
      teacher_params = start_weights(config, spec, process)
    params = initial_student(model, config.distill, config.seed, teacher_params)
  # Own buffers: the train step donates the student's state, and the teacher
  # (frozen) must not lose the arrays they would otherwise share.
  params = jax.tree.map(jnp.copy, params)
  loss_fn = student_loss(model, teacher, process, config.distill, config.model.label_dropout)
  return StudentSetup(config, spec, source, process, model, teacher, params, loss_fn)


def _name_array_data(config, tokens, labels):
  """The config with data.name "array" when tokens are passed and it names none."""
  if tokens is None:
    if labels is not None:
      raise ValueError("labels= were passed without tokens=: pass the tokens [N, D] they label")
    return config
  name = config.data.get("name") if config.get("data") is not None else None
  if name not in (None, pipeline.ARRAY):
    raise ValueError(
      f"tokens= were passed, but config.data.name={name!r} names a data set: set "
      f"config.data = configuration.data_config({pipeline.ARRAY!r}) (or leave "
      "config.data.name unset) to distil on the array, or drop tokens="
    )
  config = config.copy_and_resolve_references()
  if config.get("data") is None:
    config.data = pipeline.default_data_config(pipeline.ARRAY)
  config.data.name = pipeline.ARRAY
  return config


def start_weights(config, spec, process):
  """The product network an ideal teacher's student starts from: the weights
  of the run config.teacher.init_workdir names (checked against the config by
  `configuration.resolve`), or None for a fresh network."""
  workdir = config.teacher.get("init_workdir")
  if not workdir:
    return None
  net = config.copy_and_resolve_references()
  net.teacher.update(kind="network", workdir=workdir)
  return load_teacher(net, spec, process).frozen


def initial_student(model, d, seed: int, teacher_params=None):
  """The student's parameters at step 0: a fresh init of `model` (a product
  teacher's weights copied in where `teacher_params` is given), its latent
  path started as d.student_start / d.latent_init_scale say."""
  params = train_step.init_params(model, seed)
  if teacher_params is not None:
    params = networks.student_params_from_teacher(teacher_params, params)
  return start_student(params, jax.random.key(seed + 1), d.student_start, d.latent_init_scale)


def student_loss(model, teacher: Teacher, process, d, label_dropout: float = 0.0):
  """`di4c_loss` with our network as the student: train mode (dropout) at t,
  eval mode for the consistency target."""
  return di4c_loss(
    denoisers.from_network(model, train=True),
    teacher,
    process,
    d,
    label_dropout,
    model.num_classes,
    target=denoisers.from_network(model),
  )


def student_task(setup: StudentSetup) -> trainer.Task:
  """The trainer's view of a distillation run."""
  c, spec, process = setup.config, setup.spec, setup.process
  denoise = denoisers.mixture(denoisers.from_network(setup.model))

  def sample_fn(params, key, num):
    return samplers.sample(key, process, denoise, params, num, spec.length, c.train.sample_steps)

  return trainer.Task(
    desc="distill",
    loss_fn=setup.loss_fn,
    params=setup.params,
    batcher=pipeline.make_batcher(
      setup.source,
      c.train.batch_size,
      seed=c.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      vocab_size=spec.vocab_size,
    ),
    signature=configuration.model_signature(c, spec),
    meta={"kind": "student", "data": spec.name, "teacher": setup.teacher.description},
    spec=spec,
    frozen=setup.teacher.frozen,
    provenance=setup.teacher.provenance,
    sample_hook=visualize.sample_hook(sample_fn, spec, "distill", c.train.num_samples),
  )


def distill_student(
  config, workdir: str, teacher: Teacher | None = None, tokens=None, labels=None
) -> train_step.TrainState:
  """Trains (or resumes, or finds finished) a Di4C student; checkpoints in workdir.

  Resuming against a teacher that changed since (another step or other
  weights) raises checkpoints.ProvenanceChanged, unless
  config.teacher.restart_if_changed. Raises trainer.Preempted after a
  preemption save.

  A teacher of one's own and a token array (see `setup_student`) take the
  same path: checkpoints, resume, sharding over the devices, provenance and
  the sample grids. The workdir records what `runs.load_run` needs to sample
  the student (config.json: the array's vocabulary and length, the process,
  the network); a user teacher's function is not stored: pass the same
  teacher (and tokens) again to resume, and to `runs.from_teacher` to sample
  or evaluate it.
  """
  setup = setup_student(config, teacher, tokens, labels)
  log.info(
    "distilling %s into a mixture student (L=%d, preset %s)",
    setup.teacher.description,
    setup.config.distill.num_latents,
    setup.config.distill.preset,
  )
  return trainer.run(
    student_task(setup),
    setup.config,
    workdir,
    restart_if_changed=bool(setup.config.teacher.get("restart_if_changed")),
  )


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
    key, kernel.shape, kernel.dtype
  )
  return params


def marginal_kl(
  teacher: Teacher, model: networks.Transformer, params, process, tokens, key, num_latents: int = 64
) -> float:
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
    t_lp = jax.nn.log_softmax(teacher.denoise(frozen, x_t, t, k_teacher), -1)
    s_lp = student.denoise(params, x_t, t, k_lam)
    return jnp.sum(losses.kl_categorical(t_lp, s_lp)) / (n * length)

  return float(kl(params, teacher.frozen, key))


@dataclasses.dataclass(frozen=True)
class QuickResult:
  """What `quick_distill` returns: the set-up, the trained parameters (EMA
  or raw as config.train.eval_weights) and the loss of every step."""

  setup: StudentSetup
  params: Any
  losses: np.ndarray


def quick_distill(
  config,
  num_steps: int | None = None,
  chunk: int = 100,
  log_every: int = 0,
  *,
  teacher: Teacher | None = None,
  tokens=None,
  labels=None,
) -> QuickResult:
  """Distillation without checkpoints (`trainer.fit_scanned`), for small
  experiments, notebooks and tests. Single device. teacher, tokens, labels:
  as `setup_student`."""
  setup = setup_student(config, teacher, tokens, labels)
  c = setup.config
  num_steps = num_steps or c.train.num_steps
  opt = train_step.make_optimizer(c.optim, num_steps)
  step = train_step.make_step(setup.loss_fn, opt, c.optim.ema_decay, c.optim.ema_warmup)
  batcher = pipeline.make_batcher(
    setup.source, c.train.batch_size, seed=c.seed, vocab_size=setup.spec.vocab_size
  )
  state, seen = trainer.fit_scanned(
    train_step.init_state(setup.params, opt),
    step,
    batcher,
    num_steps,
    c.seed,
    setup.teacher.frozen,
    chunk,
    log_every,
    "quick_distill",
  )
  params = state.ema_params if c.train.eval_weights == "ema" else state.params
  return QuickResult(setup, params, seen)
