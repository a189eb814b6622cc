"""Di4C's maths: what a distillation step computes, for any teacher and student.

The pieces, in the order a distillation step uses them:
  * `sample_times`: t, u = t - Delta and the per-example gates of a preset
    (tauLDR, MaskGIT, SDTT: docs/method.md section 4's table; the presets live
    with the config schema, `configuration.distill_preset`);
  * `Teacher`: any `denoisers.Denoiser` with its frozen parameters: our
    network (product), a distilled student (a mixture teacher for "di4c^2":
    its components' probabilities averaged over its latent nodes), the exact
    ideal denoiser of a tiny family or of the Markov chain, or a user function;
  * `component_log_probs` and `di4c_loss`: the distillation, consistency and
    data terms;
  * `initial_student` / `start_student` / `student_loss`: our network as the
    student.
A run from a config (data, checkpoints, the trainer) is `distill.py`'s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import (
  categorical,
  checkpoints,
  denoisers,
  losses,
  markov_exact,
  networks,
  samplers,
  train_step,
)
from mixture_dd.data import pipeline
from mixture_dd.denoisers import Denoiser

# ---------------------------------------------------------------------------
# Times and gates.
# ---------------------------------------------------------------------------


def sample_times(key, batch: int, distill_cfg):
  """Per-example times and gates of a preset: a dict of `[batch]` arrays.

  t: the consistency / data time (with probability distill.top_t_prob exactly 1, where
  every sampler's first step calls the student); u = t - Delta; distill_t: the time of the
  distillation term ("same" mode: t itself, `[batch]`; "separate" mode: one
  time per (example, latent), `[batch, num_latents]`: distill_lo with
  probability distill_p_lo, else U[distill_lo, distill_hi]); w_distill,
  w_consis: 0/1 gates (masks, never Python control flow); alpha: the
  correlation data term's weight.
  """
  k_t, k_d, k_small, k_pick, k_dist = jax.random.split(key, 5)
  if distill_cfg.delta == "loguniform":
    delta = jnp.exp(
      jax.random.uniform(
        k_d, (batch,), minval=np.log(distill_cfg.delta_lo), maxval=np.log(distill_cfg.delta_hi)
      )
    )
  else:
    delta = jnp.full((batch,), distill_cfg.delta_lo)
  if distill_cfg.t_sampling == "uniform":
    lo = distill_cfg.t_min + (delta if distill_cfg.t_offset_by_delta else 0.0)
    t = lo + (1.0 - lo) * losses.stratified_times(k_t, batch)
  else:  # one t per batch, a fraction of batches near the data end
    small = jax.random.bernoulli(k_pick, distill_cfg.small_t_prob)
    u01 = jax.random.uniform(k_small, ())
    t_one = jnp.where(
      small,
      distill_cfg.small_t_max * u01,
      distill_cfg.small_t_max + (1.0 - distill_cfg.small_t_max) * u01,
    )
    t = jnp.full((batch,), t_one)
  top_prob = distill_cfg.get("top_t_prob", 0.0)  # saved configs predate the field
  if top_prob > 0:  # its own key (fold_in), so that the other draws keep their bits
    shape = (batch,) if distill_cfg.t_sampling == "uniform" else ()
    t = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), top_prob, shape), 1.0, t)
  t = jnp.clip(t, 1e-5, 1.0)
  if distill_cfg.delta == "min_frac":
    delta = jnp.minimum(delta, distill_cfg.delta_frac * t)
  u = jnp.maximum(t - delta, 0.0)
  if distill_cfg.distill_mode == "separate":
    k_u, k_lo = jax.random.split(k_dist)
    shape = (batch, distill_cfg.num_latents)
    distill_t = jnp.where(
      jax.random.bernoulli(k_lo, distill_cfg.distill_p_lo, shape),
      distill_cfg.distill_lo,
      jax.random.uniform(k_u, shape, minval=distill_cfg.distill_lo, maxval=distill_cfg.distill_hi),
    )
    w_distill = jnp.ones((batch,))
    w_consis = jnp.ones((batch,))
  else:
    distill_t = t
    w_distill = (t < distill_cfg.distill_threshold).astype(jnp.float32)
    w_consis = 1.0 - w_distill
  if distill_cfg.get("alpha_schedule", "sigmoid") == "const":  # saved configs predate the field
    alpha = jnp.full_like(t, distill_cfg.alpha_scale)
  else:
    alpha = distill_cfg.alpha_scale * jax.nn.sigmoid(20.0 * (t - 0.5))
  return dict(t=t, u=u, distill_t=distill_t, w_distill=w_distill, w_consis=w_consis, alpha=alpha)


def confidence_step_temperature(distill_cfg, t):
  """Gumbel temperature of the teacher's MaskGIT confidence step at time t `[...]`.

  The MaskGIT sampler with T = distill_cfg.confidence_steps steps starts step k at
  progress r = 1 - t = k / T with temperature c (1 - k / (T - 1)), c =
  distill_cfg.confidence_temperature; the official training step (Trainer/vit.py)
  interpolates that as c (1 - r T / (T - 1)). That is below c (1 - r), and it
  turns negative for r > (T - 1) / T, which the sampler never reaches (its
  last step has temperature 0) and where a negative factor would flip the
  Gumbel noise's sign instead of removing it: clipped at 0 here (the official
  code leaves it negative, at most c / (T - 1) in size).
  """
  ramp = distill_cfg.confidence_steps / (distill_cfg.confidence_steps - 1.0)
  return distill_cfg.confidence_temperature * jnp.maximum(1.0 - (1.0 - t) * ramp, 0.0)


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
  model: networks.Transformer, params, latent_nodes: int = 16, provenance: dict | None = None
) -> Teacher:
  """Our network as a teacher: a product, or (latent=True) a mixture teacher
  whose marginals average its components over `latent_nodes` stratified
  latents (di4c^2: a student teaches the next round)."""
  net = denoisers.from_network(model)
  if not model.latent:
    return Teacher(net, params, "product network", provenance=provenance)
  return Teacher(
    denoisers.mixture_marginals(net, latent_nodes),
    params,
    f"mixture network (L={latent_nodes})",
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
      f"teacher must be a mixture_dd.Teacher, got {type(teacher).__name__}; wrap a plain "
      "fn(frozen, x_t, t) -> logits as mixture_dd.Teacher(mixture_dd.from_function(fn), "
      "frozen, 'a description')"
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


def component_log_probs(
  component: Denoiser,
  params,
  x,
  t,
  lam,
  labels,
  key,
  chunks: int = 1,
  remat: bool = True,
  block_offset=None,
):
  """Log-probabilities `[B, L, D, S]` of L mixture components, one per latent.

  component: a mixture's component, a denoiser taking lam (logits
  `[N, D, S]`); x `[B, L, D]` int and t `[B, L]`: each latent's input, or x
  `[B, D]` and t `[B]`, one input shared by an example's L latents (then a
  component with `components`, a local student, runs its trunk once per
  example, once per chunk with chunks, instead of L times:
  `denoisers.from_network`); lam
  `[B, L]` (scalar latents) or `[B, L, k]`; labels `[B]` int or None (each
  example's label goes to its L components); key: the component's (e.g.
  dropout) key; block_offset `[B]` int or None: each example's rotation of a
  local student's blocks (`networks.block_groups`), the same for its L
  components. The B x L inputs run as one batch; with chunks = c > 1 (c
  divides L) as c sequential micro-batches of L / c (lax.map), each
  rematerialised in the backward pass when `remat`, so activation memory
  scales with B x L / c instead of B x L. The values, and so the gradients,
  are those of the unchunked pass.

  A coupled student (`denoisers.latent_coupled`) with a shared input returns its L x L
  latent pairs `[B, L L, D, S]`: row i L + j is the component at latent i's A-block
  coordinates and latent j's B-block coordinates (what `losses.mixture_log_likelihood(...,
  coupled=True)` reads), from L passes of each of its two paths.
  """
  b, num_l = lam.shape[:2]
  per = num_l // chunks
  shared = x.ndim == 2
  if shared and getattr(component, "components", None) is not None:
    kw = {} if block_offset is None else {"block_offset": block_offset}
    coupled = denoisers.latent_coupled(component)

    def shared_one(lam_c, key_c):
      if coupled:  # the two paths' terms, [B, per, 2, D, S]: paired after the chunks
        return jnp.stack(
          component.coupled_parts(params, x, t, key_c, lam_c, labels=labels, **kw), 2
        )
      logits = component.components(params, x, t, key_c, lam_c, labels=labels, **kw)
      return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

    out = _over_chunks(shared_one, (lam,), key, chunks, remat)
    if not coupled:
      return out
    return denoisers.coupled_pair_log_probs(out[:, :, 0], out[:, :, 1])
  if shared:  # any other component: the L copies of the input, run as a batch
    x = jnp.broadcast_to(x[:, None], (b, num_l) + x.shape[1:])
    t = jnp.broadcast_to(t[:, None], (b, num_l))

  def one(x_c, t_c, lam_c, key_c):
    r = lambda a: None if a is None else jnp.repeat(a, per, axis=0)
    kw = {} if block_offset is None else {"block_offset": r(block_offset)}
    logits = component(
      params,
      x_c.reshape((b * per,) + x_c.shape[2:]),
      t_c.reshape(-1),
      key_c,
      lam=lam_c.reshape((b * per,) + lam_c.shape[2:]),
      labels=r(labels),
      **kw,
    )
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return lp.reshape((b, per) + lp.shape[1:])

  return _over_chunks(one, (x, t, lam), key, chunks, remat)


def _over_chunks(fn, arrays, key, chunks: int, remat: bool):
  """fn(*arrays, key) `[B, L, ...]` on the whole L axis of arrays `[B, L, ...]`, or on
  `chunks` sequential slices of it (lax.map), each rematerialised in the backward pass
  when `remat`, with one key per slice."""
  if chunks == 1:
    return fn(*arrays, key)
  b, num_l = arrays[0].shape[:2]
  per = num_l // chunks
  f = jax.checkpoint(fn) if remat else fn
  split = lambda a: jnp.moveaxis(a.reshape((b, chunks, per) + a.shape[2:]), 1, 0)
  out = jax.lax.map(lambda a: f(*a), (*map(split, arrays), jax.random.split(key, chunks)))
  return jnp.moveaxis(out, 0, 1).reshape((b, num_l) + out.shape[3:])


def di4c_loss(
  student: Denoiser,
  teacher: Teacher,
  process,
  distill_cfg,
  label_dropout: float = 0.0,
  num_classes: int = 0,
  target: Denoiser | None = None,
):
  """`loss_fn(params, batch, key, frozen) -> (loss, metrics)` of docs/method.md sec. 4.

  `student` is the mixture student's component (a denoiser taking lam) in
  train mode; `target` the same in eval mode, for the consistency target
  (defaults to `student`).

  Per example: distill_weight * w_distill * distillation + w_consis *
  consistency + marginal_weight * KL(teacher_t || mixture marginal_t) +
  data_weight * alpha_t * (-C(x0)). The teacher-marginal KL is on at every t
  in every preset (as in the official code); data_weight only switches the
  correlation part on real x0 ("di4c" = 0, "di4c-d" = 1).

  Gradients flow only through the student's passes at t (and, in
  "separate" mode, at the distillation times); the teacher, the x_u draws,
  the student at u and the x0 targets are all stop-gradient.

  Latents are `[B, L]` uniforms, or `[B, L, k]` for a student with
  latent_dim k > 1 (`denoisers.latent_dim(student)`; a mixture teacher's
  own latents have its own k), each set drawn from its own key: iid, or
  stratified along L (`distill.latent_sampling`, `denoisers.draw_latents`:
  the same law per latent, a tighter likelihood estimate). A student with
  local latents (`denoisers.latent_blocks(student)` = k > 1) has its
  likelihood, and so C, scored block by block (`losses.mixture_log_likelihood`);
  one that rotates its blocks (`denoisers.latent_shifts(student)` > 1) gets
  a uniform offset per example for its passes at t (and the target's at u,
  its own), from keys folded off the loss key, so that every other draw is
  the same as without it, and C is scored on the partition of its pass at t.
  """
  num_l = distill_cfg.num_latents
  chunks = distill_cfg.latent_chunks
  target = student if target is None else target
  k_student = denoisers.latent_dim(student)
  blocks = denoisers.latent_blocks(student)
  shifting = denoisers.latent_shifts(student) > 1
  coupled = denoisers.latent_coupled(student)
  stratified = distill_cfg.get("latent_sampling", "iid") == "stratified"

  def latents(key, b, k):  # each example's L latents: [B, L] or [B, L, k]
    return denoisers.draw_latents(key, (b, num_l), k, stratified)

  def rep(a):
    return None if a is None else jnp.repeat(a, num_l, axis=0)

  def student_lp(params, x, t, lam, labels, key, train, remat=True, offset=None):
    net = student if train else target
    return component_log_probs(net, params, x, t, lam, labels, key, chunks, remat, offset)

  def per_latent(a):  # [B, ...] -> [B, L, ...]
    return jnp.broadcast_to(a[:, None], (a.shape[0], num_l) + a.shape[1:])

  def loss_fn(params, batch, key, frozen):
    x0 = batch["tokens"]
    b, length = x0.shape
    names = (
      "times xt teacher lam_t drop_t step lam_u draw xd teacher_d lam_d drop_d labels mu drop_u"
    )
    keys = dict(zip(names.split(), jax.random.split(key, 15)))
    labels = batch.get("labels") if num_classes else None
    # The same dropped labels go to the teacher and the student.
    labels = losses.drop_labels(keys["labels"], labels, label_dropout, num_classes)
    tm = sample_times(keys["times"], b, distill_cfg)
    t, u = tm["t"], tm["u"]
    x_t = process.sample_xt(keys["xt"], x0, t)
    teacher_logits = jax.lax.stop_gradient(
      teacher.denoise(frozen, x_t, t, keys["teacher"], labels=labels)
    )
    teacher_lp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
    lam = latents(keys["lam_t"], b, k_student)
    off_t = off_u = groups = None
    if shifting:  # folded keys: the 15 split keys above stay those of a fixed partition
      off_t = denoisers.draw_block_offsets(jax.random.fold_in(key, 15), student, b)
      off_u = denoisers.draw_block_offsets(jax.random.fold_in(key, 16), student, b)
    if coupled:  # the likelihood is scored on the segments (the cycle of A and B latents)
      groups = jnp.broadcast_to(networks.coupled_groups(length, blocks, off_t)[1], (b, length))
    elif shifting:
      groups = networks.block_groups(length, blocks, off_t)
    # One x_t for the L latents: a local student runs its trunk once (component_log_probs).
    lp = student_lp(params, x_t, t, lam, labels, keys["drop_t"], True, offset=off_t)

    # Consistency: one teacher step t -> u from every latent copy of x_t,
    # then the student at u (eval mode, no gradient) as the target.
    x_rep, t_rep, u_rep = rep(x_t), rep(t), rep(u)
    if teacher.component is None:
      step_logits = rep(teacher_logits)
    else:  # a mixture teacher: each copy steps with its own teacher latent
      # [B, L] reshaped to [B L]: iid, the same bits as a [B L] draw.
      mu = latents(keys["mu"], b, denoisers.latent_dim(teacher.component))
      mu = mu.reshape((b * num_l,) + mu.shape[2:])
      step_logits = jax.lax.stop_gradient(
        teacher.component(frozen, x_rep, t_rep, keys["mu"], lam=mu, labels=rep(labels))
      )
    if distill_cfg.teacher_step == "confidence":
      n_after = jnp.round(length * (1.0 - process.alpha(u_rep))).astype(jnp.int32)
      x_u = samplers.confidence_step(
        keys["step"],
        process,
        x_rep,
        step_logits,
        n_after,
        confidence_step_temperature(distill_cfg, t_rep),
      )
    else:
      x_u = samplers.analytic_step(keys["step"], process, x_rep, t_rep, u_rep, step_logits)
    x_u = jax.lax.stop_gradient(x_u.reshape(b, num_l, length))
    lam_u = latents(keys["lam_u"], b, k_student)
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
        offset=off_u,
      )
    )
    x0_i = categorical.sample(keys["draw"], q)  # [B, L, D]: x0^(i) ~ q_i
    consis = losses.consistency_term(lp, q, x0_i, blocks, groups, coupled)

    if distill_cfg.distill_mode == "same":
      distill = losses.distillation_term(teacher_lp, lp)
    else:  # a fresh x_delta per (example, latent)
      dt = tm["distill_t"]  # [B, L]
      x_d = process.sample_xt(keys["xd"], rep(x0), dt.reshape(-1))
      t_lp = jax.nn.log_softmax(
        jax.lax.stop_gradient(
          teacher.denoise(frozen, x_d, dt.reshape(-1), keys["teacher_d"], labels=rep(labels))
        ).astype(jnp.float32),
        -1,
      )
      lam_d = latents(keys["lam_d"], b, k_student)
      lp_d = student_lp(
        params, x_d.reshape(b, num_l, length), dt, lam_d, labels, keys["drop_d"], True
      )
      distill = losses.distillation_term(t_lp.reshape(lp_d.shape), lp_d)
    marginal = losses.marginal_term(lp, teacher_lp)
    data_corr = losses.data_correlation_term(lp, x0, tm["alpha"], blocks, groups, coupled)

    per_example = (
      distill_cfg.distill_weight * tm["w_distill"] * distill
      + tm["w_consis"] * consis
      + distill_cfg.marginal_weight * marginal
      + distill_cfg.data_weight * data_corr
    )
    loss = jnp.mean(per_example)
    gate_mean = lambda v, w: jnp.sum(w * v) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {
      "distillation": gate_mean(distill, tm["w_distill"]),
      "consistency": gate_mean(consis, tm["w_consis"]),
      "marginal": jnp.mean(marginal),
      "data_correlation": jnp.mean(data_corr),
      "frac_distill": jnp.mean(tm["w_distill"]),
      # NaN here names the teacher when its outputs go bad (the KLs mask
      # NaN probabilities, so the loss alone would stay finite).
      "teacher_check": jnp.where(jnp.all(jnp.isfinite(teacher_lp)), 0.0, jnp.nan),
    }
    return loss, metrics

  return loss_fn


def initial_student(model, distill_cfg, seed: int, teacher_params=None):
  """The student's parameters at step 0: a fresh init of `model` (a product
  teacher's weights copied in where `teacher_params` is given), its latent
  path started as distill_cfg.student_start / distill_cfg.latent_init_scale say."""
  params = train_step.init_params(model, seed)
  if teacher_params is not None:
    params = networks.student_params_from_teacher(teacher_params, params)
  return start_student(
    params, jax.random.key(seed + 1), distill_cfg.student_start, distill_cfg.latent_init_scale
  )


def student_loss(model, teacher: Teacher, process, distill_cfg, label_dropout: float = 0.0):
  """`di4c_loss` with our network as the student: train mode (dropout) at t,
  eval mode for the consistency target."""
  return di4c_loss(
    denoisers.from_network(model, train=True),
    teacher,
    process,
    distill_cfg,
    label_dropout,
    model.num_classes,
    target=denoisers.from_network(model),
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


def mixture_total_correlation(key, lp, num_draws: int = 64, blocks: int = 1, coupled=False):
  """Total correlation of the uniform mixture of L products lp `[B, L, D, S]`, nats `[B]`.

  TC = E_{x ~ mixture} [log mixture(x) - sum_d log pbar_d(x^d)], the mean of
  the correlation functional C over `num_draws` draws of the mixture (a
  component uniformly, then its product): unbiased for these L components
  (exact TC needs a sum over S^D states). 0 when every component is the same
  product; what a student's mixture expresses beyond its marginals, to set
  against the exact posterior's (`markov_exact.posterior_total_correlation`).
  blocks = k > 1 (local latents): the law is a product of k block mixtures,
  so each block draws its own component and C is scored block by block.
  coupled=True (a coupled student's L x L pairs, lp `[B, L L, D, S]`, row i L + j: A-latent
  i, B-latent j; blocks = k, the partitions at offset 0): each of the 2 k latents draws its
  own index, position d takes the row of its A- and B-blocks' indices, and C is the cycle
  likelihood's (`losses.mixture_log_likelihood(..., coupled=True)`).
  """
  chex.assert_rank(lp, 4)
  b, num_l, length, _ = lp.shape
  k_j, k_x = jax.random.split(key)
  groups = None
  if coupled:
    num_l = math.isqrt(num_l)
    if num_l * num_l != lp.shape[1]:
      raise ValueError(f"a coupled student's lp has L x L rows, got {lp.shape[1]}")
    ij = jax.random.randint(k_j, (b, num_draws, 2 * blocks), 0, num_l)
    b_groups, segments = networks.coupled_groups(length, blocks)
    a_idx = jnp.take(ij, networks.block_groups(length, blocks)[0], axis=-1)
    j = a_idx * num_l + jnp.take(ij, blocks + b_groups[0], axis=-1)  # [B, M, D]
    groups = jnp.broadcast_to(segments, (b, length))
  else:
    j = jax.random.randint(k_j, (b, num_draws, blocks), 0, num_l)
    j = jnp.repeat(j, length // blocks, axis=-1)  # [B, M, D]: each position's component
  picked = jnp.take_along_axis(lp, j[..., None], axis=1)  # [B, M, D, S]
  x = jax.random.categorical(k_x, picked)
  return jnp.mean(losses.correlation(lp, x, None, blocks, groups, coupled), axis=-1)


def marginal_kl(
  teacher: Teacher,
  model: networks.Transformer,
  params,
  process,
  tokens,
  key,
  latent_nodes: int = 64,
) -> float:
  """E KL(teacher_t || student mixture marginal_t) per token, in nats.

  Over x0 = the rows of `tokens` `[n, D]`, stratified t ~ U[0, 1] and
  x_t ~ q_t(. | x0); the student's marginals average `latent_nodes`
  stratified latents. 0 for a student that starts exactly at its teacher.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  n, length = tokens.shape
  # The student's mixture marginals are those it would give as a di4c^2 teacher.
  student = network_teacher(model, params, latent_nodes)

  @jax.jit
  def kl(params, frozen, key):
    k_t, k_x, k_teacher, k_lam = jax.random.split(key, 4)
    t = losses.stratified_times(k_t, n)
    x_t = process.sample_xt(k_x, tokens, t)
    t_lp = jax.nn.log_softmax(teacher.denoise(frozen, x_t, t, k_teacher), -1)
    s_lp = student.denoise(params, x_t, t, k_lam)
    return jnp.sum(losses.kl_categorical(t_lp, s_lp)) / (n * length)

  return float(kl(params, teacher.frozen, key))
