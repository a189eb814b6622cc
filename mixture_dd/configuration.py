"""Config schema, validation and the objects a config builds.

A config (ml_collections.ConfigDict) has these sections:
  seed                 int
  data                 see mixture_dd.data.pipeline.default_data_config
  process              name, vocab_size (None = the data's), schedule / CTMC fields
  model                width, depth, heads, mlp_ratio, dropout, positions,
                       class_conditional, label_dropout, dtype
  loss                 t_min (teacher); Di4C fields live in `distill`
  optim                lr, warmup_steps, weight_decay, b1, b2, clip, ema_decay,
                       ema_warmup, schedule
  train                batch_size, num_steps, log_every, ckpt_every, keep,
                       sample_every, sample_steps, num_samples, eval_weights
A distillation config also has
  teacher              kind ("network" | "ideal" | "user"), workdir, num_latents,
                       restart_if_changed; optional init_workdir (an ideal
                       or user teacher's student starts from that run's weights)
  distill              a preset of the Di4C knobs (`distill_preset`)
and takes data/process/model from its teacher's run (`resolve`); an ideal
teacher's config sets them itself, a user teacher's (a `distill.Teacher`
passed in) too, over base_config()'s process and model. Data may be a token
array passed in (data.name "array", `pipeline.array_source`).
Validation happens here, once (`validate`); every check raises a ValueError
that names the field and what it accepts. The modules downstream assume a
valid config.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from mixture_dd import networks, processes
from mixture_dd.data import pipeline

SECTIONS = ("data", "process", "model", "loss", "optim", "train")
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
EVAL_WEIGHTS = ("ema", "raw")  # which weights sampling and evaluation use


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every teacher config; experiment files override numbers."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config("digits")
  c.process = ml_collections.ConfigDict(
    dict(
      name="masked", vocab_size=ml_collections.config_dict.placeholder(int), schedule="loglinear"
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(
      width=128,
      depth=4,
      heads=4,
      mlp_ratio=4,
      dropout=0.0,
      positions="rope",
      class_conditional=False,
      label_dropout=0.1,
      dtype="float32",
      # A student's latent: lambda in [0, 1]^latent_dim, latent_dim independent
      # uniforms, each embedded (an int >= 1; 1 is the paper's scalar latent).
      # A product teacher has no latent path and ignores it.
      latent_dim=1,
    )
  )
  c.loss = ml_collections.ConfigDict(dict(t_min=0.0))
  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-3,
      warmup_steps=100,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      clip=1.0,
      ema_decay=0.999,
      ema_warmup=True,
      schedule="cosine",
    )
  )
  c.train = ml_collections.ConfigDict(
    dict(
      batch_size=128,
      num_steps=2000,
      log_every=50,
      ckpt_every=500,
      keep=3,
      sample_every=1000,
      sample_steps=64,
      num_samples=64,
      eval_weights="ema",
    )
  )
  return c


def data_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The data section: the data set's defaults with `overrides` checked."""
  c = pipeline.default_data_config(name)
  unknown = set(overrides) - set(c)
  if unknown:
    raise ValueError(
      f"config.data: {sorted(unknown)} are not fields of {name!r}; it accepts {sorted(c)}"
    )
  c.update(overrides)
  return c


def distill_base_config(preset: str = "sdtt") -> ml_collections.ConfigDict:
  """Defaults of a distillation config. data/process/model come from the
  teacher's run (config.teacher.workdir) unless the file sets them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.teacher = ml_collections.ConfigDict(
    dict(
      kind="network",
      workdir=ml_collections.config_dict.placeholder(str),
      num_latents=16,
      restart_if_changed=False,
    )
  )
  # Filled from the teacher's run by `resolve`; only a data_dir of one's own,
  # and the name of the data set the config is meant for (None: any; else a
  # teacher of another data set is refused).
  c.data = ml_collections.ConfigDict(
    dict(
      name=ml_collections.config_dict.placeholder(str),
      data_dir=ml_collections.config_dict.placeholder(str),
    )
  )
  c.distill = distill_preset(preset)
  # Filled from the teacher's run by `resolve`, as data is; latent_dim (see
  # base_config) may be set here, e.g. --config.model.latent_dim=4 (None:
  # the teacher run's, 1 for a product teacher's).
  c.model = ml_collections.ConfigDict(dict(latent_dim=ml_collections.config_dict.placeholder(int)))
  c.loss = ml_collections.ConfigDict(dict(t_min=0.0))
  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-4,
      warmup_steps=50,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      clip=1.0,
      ema_decay=0.99,
      ema_warmup=True,
      schedule="constant",
      latent_lr_mult=1.0,
    )
  )
  c.train = ml_collections.ConfigDict(
    dict(
      batch_size=32,
      num_steps=500,
      log_every=50,
      ckpt_every=250,
      keep=3,
      sample_every=0,
      sample_steps=8,
      num_samples=64,
      eval_weights="ema",
    )
  )
  return c


PRESETS = {
  # tauLDR / CIFAR-10: every example gets both terms; a fresh x_delta per
  # (example, latent) at delta = 0.01 w.p. 1/2, else U[0.01, 0.02].
  "tauldr": dict(
    num_latents=16,
    t_sampling="uniform",
    t_min=0.01,
    t_offset_by_delta=True,
    delta="loguniform",
    delta_lo=1e-3,
    delta_hi=1e-2,
    delta_frac=0.5,
    distil_mode="separate",
    distil_lo=0.01,
    distil_hi=0.02,
    distil_p_lo=0.5,
    distil_threshold=0.0,
    distil_weight=1.0,
    alpha_scale=1.0,
    data_weight=0.0,
    marginal_weight=1.0,
    small_t_prob=0.0,
    small_t_max=0.0,
    teacher_step="analytic",
    confidence_temperature=0.0,
    confidence_steps=0,
  ),
  # MaskGIT / ImageNet: progress r = 1 - t; distil on r >= 0.95 with the same
  # x_t; the consistency target's teacher step is MaskGIT's confidence step.
  "maskgit": dict(
    num_latents=32,
    t_sampling="uniform",
    t_min=0.0,
    t_offset_by_delta=False,
    delta="const",
    delta_lo=0.05,
    delta_hi=0.05,
    delta_frac=0.5,
    distil_mode="same",
    distil_lo=0.0,
    distil_hi=0.0,
    distil_p_lo=0.0,
    distil_threshold=0.05,
    distil_weight=20.0,
    alpha_scale=0.1,
    data_weight=0.0,
    marginal_weight=1.0,
    small_t_prob=0.0,
    small_t_max=0.0,
    teacher_step="confidence",
    # Gumbel temperature of the teacher's confidence step at progress r = 1 - t:
    # confidence_temperature * max(0, 1 - r T / (T - 1)), T = confidence_steps,
    # the MaskGIT sampler's temperature at the step that starts at r = k / T
    # (see `distill.confidence_step_temperature`).
    confidence_temperature=4.5,
    confidence_steps=8,
  ),
  # SDTT / OpenWebText: one t per batch, 30 % of batches near the data end.
  "sdtt": dict(
    num_latents=16,
    t_sampling="per_batch",
    t_min=0.0,
    t_offset_by_delta=False,
    delta="min_frac",
    delta_lo=1.0 / 1024,
    delta_hi=1.0 / 1024,
    delta_frac=0.5,
    distil_mode="same",
    distil_lo=0.0,
    distil_hi=0.0,
    distil_p_lo=0.0,
    distil_threshold=0.02,
    distil_weight=1.0,
    alpha_scale=0.1,
    data_weight=0.0,
    marginal_weight=1.0,
    small_t_prob=0.3,
    small_t_max=0.02,
    teacher_step="analytic",
    confidence_temperature=0.0,
    confidence_steps=0,
  ),
}
# Our small CPU recipe, for students trained a few hundred steps on 2 CPU cores (the digits,
# markov and pydoc_text students, the student-start study, the notebooks): SDTT's preset with
# one t per example (uniform), a constant Delta = 0.05, distillation below t = 0.05, and di4c-d
# with tauLDR's alpha (alpha_t = sigmoid(20 (t - 0.5))). SDTT's own Delta of 1/1024 is sized for
# 1024-step teachers and a 100k-step budget, not for a few hundred steps. SDTT's per-batch
# fields (small_t_prob, small_t_max, delta_frac) are kept and unused.
PRESETS["cpu_small"] = dict(
  PRESETS["sdtt"],
  t_sampling="uniform",  # "uniform" | "per_batch"
  delta="const",  # "const" | "loguniform" | "min_frac"
  delta_lo=0.05,
  delta_hi=0.05,
  distil_threshold=0.05,  # distillation term on t < this, consistency above
  data_weight=1.0,  # 0 = di4c, 1 = di4c-d (correlation of real x0)
  alpha_scale=1.0,  # alpha_t = alpha_scale * sigmoid(20 (t - 0.5))
)
# How the student starts from its teacher (see `start_student`).
STUDENT_STARTS = ("exact", "gate", "fan_in", "centred", "normal")
DEFAULT_START = "centred"
TEACHER_STEPS = ("analytic", "confidence")
T_SAMPLINGS = ("uniform", "per_batch")
DELTAS = ("loguniform", "const", "min_frac")
DISTIL_MODES = ("separate", "same")


def distill_preset(name: str, **overrides) -> ml_collections.ConfigDict:
  """The `distill` config section of a reference setup, with overrides."""
  if name not in PRESETS:
    raise ValueError(f"config.distill.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
  c = ml_collections.ConfigDict(
    dict(
      PRESETS[name],
      preset=name,
      latent_chunks=1,
      student_start=DEFAULT_START,
      latent_init_scale=1.0,
    )
  )
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
  req(
    d.latent_chunks >= 1 and d.num_latents % d.latent_chunks == 0,
    "latent_chunks",
    f"must divide num_latents={d.num_latents}, got {d.latent_chunks}",
  )
  req(d.t_sampling in T_SAMPLINGS, "t_sampling", f"{d.t_sampling!r}; choose one of {T_SAMPLINGS}")
  req(d.delta in DELTAS, "delta", f"{d.delta!r}; choose one of {DELTAS}")
  req(
    0 < d.delta_lo <= d.delta_hi < 1,
    "delta_lo",
    f"need 0 < delta_lo <= delta_hi < 1, got {d.delta_lo}, {d.delta_hi}",
  )
  req(
    d.distil_mode in DISTIL_MODES, "distil_mode", f"{d.distil_mode!r}; choose one of {DISTIL_MODES}"
  )
  if d.distil_mode == "separate":
    req(
      0 < d.distil_lo <= d.distil_hi < 1,
      "distil_lo",
      f"need 0 < distil_lo <= distil_hi < 1, got {d.distil_lo}, {d.distil_hi}",
    )
  req(0.0 <= d.t_min < 1.0, "t_min", f"must be in [0, 1), got {d.t_min}")
  req(d.latent_init_scale >= 0, "latent_init_scale", f"must be >= 0, got {d.latent_init_scale}")
  req(
    d.student_start in STUDENT_STARTS,
    "student_start",
    f"{d.student_start!r}; choose one of {STUDENT_STARTS}",
  )
  req(
    d.student_start not in ("fan_in", "centred", "normal") or d.latent_init_scale > 0,
    "latent_init_scale",
    f"student_start={d.student_start!r} needs latent_init_scale > 0 (0 is the exact start: "
    "use student_start='exact')",
  )
  req(
    d.teacher_step in TEACHER_STEPS,
    "teacher_step",
    f"{d.teacher_step!r}; choose one of {TEACHER_STEPS}",
  )
  if d.teacher_step == "confidence":
    req(
      _is_int(d.get("confidence_steps")) and d.confidence_steps >= 2,
      "confidence_steps",
      "teacher_step='confidence' needs the teacher sampler's step count T >= 2 (its Gumbel "
      f"temperature ramps over T - 1 steps; MaskGIT: 8), got {d.get('confidence_steps')!r}",
    )
  req(0.0 <= d.distil_p_lo <= 1.0, "distil_p_lo", f"must be in [0, 1], got {d.distil_p_lo}")
  for f in (
    "distil_weight",
    "data_weight",
    "alpha_scale",
    "marginal_weight",
    "confidence_temperature",
  ):
    req(d[f] >= 0, f, f"must be >= 0, got {d[f]}")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _require(cond, field, msg):
  if not cond:
    raise ValueError(f"config.{field}: {msg}")


def validate(config, spec) -> None:
  """Checks a (resolved) teacher or student config against itself and the data's spec."""
  if "distill" in config:
    validate_distill(config.distill)
  for sec in SECTIONS:
    _require(sec in config, sec, f"missing section; a config needs {SECTIONS}")
  vocab = config.process.vocab_size
  if vocab is not None:
    _require(
      int(vocab) >= spec.vocab_size,
      "process.vocab_size",
      f"{vocab} is smaller than the data's vocabulary ({spec.vocab_size} for "
      f"{spec.name}); set it to {spec.vocab_size} or leave it None",
    )
  _require(
    config.process.name in processes.PROCESSES,
    "process.name",
    f"{config.process.name!r} is unknown; choose one of {processes.PROCESSES}",
  )
  m = config.model
  _require(
    m.positions in networks.POSITIONS,
    "model.positions",
    f"{m.positions!r}; choose one of {networks.POSITIONS}",
  )
  _require(
    m.width > 0 and m.heads > 0 and m.width % m.heads == 0,
    "model.width",
    f"width {m.width} must be a positive multiple of model.heads={m.heads}",
  )
  _require(m.depth >= 1, "model.depth", f"must be >= 1, got {m.depth}")
  _require(
    _is_int(model_latent_dim(config)) and model_latent_dim(config) >= 1,
    "model.latent_dim",
    f"must be an integer >= 1 (1: the paper's scalar latent), got {m.get('latent_dim')!r}",
  )
  _require(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r}; choose one of {DTYPES}")
  _require(
    0.0 <= m.label_dropout < 1.0, "model.label_dropout", f"must be in [0, 1), got {m.label_dropout}"
  )
  if m.class_conditional:
    _require(
      spec.num_classes > 0,
      "model.class_conditional",
      f"data set {spec.name} has no labels; set it to False",
    )
  if "length" in m and m.length is not None:
    _require(
      m.length == spec.length,
      "model.length",
      f"{m.length} differs from the data's length {spec.length}",
    )
  o = config.optim
  _require(o.lr > 0 and np.isfinite(o.lr), "optim.lr", f"must be a positive number, got {o.lr}")
  _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  _require(o.clip > 0, "optim.clip", f"must be > 0, got {o.clip}")
  _require(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", f"must be in [0, 1), got {o.ema_decay}")
  _require(
    o.get("latent_lr_mult", 1.0) > 0,
    "optim.latent_lr_mult",
    f"must be > 0, got {o.get('latent_lr_mult')}",
  )
  _require(
    isinstance(o.get("ema_warmup", True), bool),
    "optim.ema_warmup",
    f"must be True or False, got {o.get('ema_warmup')!r}",
  )
  _require(
    o.schedule in LR_SCHEDULES, "optim.schedule", f"{o.schedule!r}; choose one of {LR_SCHEDULES}"
  )
  t = config.train
  for f in ("batch_size", "num_steps", "log_every", "ckpt_every", "keep"):
    _require(_is_int(t[f]) and t[f] > 0, f"train.{f}", f"must be a positive integer, got {t[f]!r}")
  _require(
    _is_int(t.sample_every) and t.sample_every >= 0,
    "train.sample_every",
    f"must be an integer >= 0 (0 = never), got {t.sample_every!r}",
  )
  _require(
    t.get("eval_weights", "ema") in EVAL_WEIGHTS,
    "train.eval_weights",
    f"{t.get('eval_weights')!r}; choose one of {EVAL_WEIGHTS}",
  )
  _require(
    0.0 <= config.loss.t_min < 1.0, "loss.t_min", f"must be in [0, 1), got {config.loss.t_min}"
  )


def make_process(config, spec) -> processes.Process:
  pc = ml_collections.ConfigDict(config.process.to_dict())
  if pc.vocab_size is None:
    pc.vocab_size = spec.vocab_size
  return processes.make_process(pc)


def make_model(config, spec, process, latent: bool = False) -> networks.Transformer:
  import jax.numpy as jnp

  m = config.model
  return networks.Transformer(
    num_states=process.num_states,
    vocab_size=process.vocab_size,
    length=spec.length,
    width=m.width,
    depth=m.depth,
    heads=m.heads,
    mlp_ratio=m.mlp_ratio,
    dropout=m.dropout,
    positions=m.positions,
    num_classes=spec.num_classes if m.class_conditional else 0,
    latent=latent,
    latent_entry=latent_entry(config) if latent else "add",
    mask_id=process.mask_id,
    dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32,
    latent_dim=model_latent_dim(config) if latent else 1,
  )


def model_latent_dim(config):
  """config.model.latent_dim; 1 where it is unset (None, or a run config
  written before the field existed)."""
  k = config.model.get("latent_dim")
  return 1 if k is None else k


def entry_for_start(student_start: str | None) -> str:
  """The latent entry (networks.LatentEmbed) a distill.student_start needs."""
  return {"gate": "gate", "centred": "centred"}.get(student_start, "add")


def latent_entry(config) -> str:
  """The student's latent entry for its config.distill.student_start."""
  d = config.get("distill")
  return entry_for_start(d.get("student_start") if d is not None else None)


def model_signature(config, spec) -> dict:
  """What a checkpoint's parameters depend on; compared on restore.

  A student (config.is_student) adds its latent path's entry and its
  latent_dim (as "latent": checkpoints from before latent_dim existed saved
  True there, and True == 1, so they still load as latent_dim 1; a k > 1
  student also signs "model.latent_dim", which names the config field when
  it is refused)."""
  # Parameters are float32 at any activation dtype, so model.dtype is free
  # to change between a checkpoint and its use (as dropout is).
  sig = {
    f"model.{k}": v
    for k, v in config.model.to_dict().items()
    if k not in ("dropout", "label_dropout", "dtype", "latent_dim")
  }
  sig.update({f"process.{k}": v for k, v in config.process.to_dict().items()})
  sig["process.vocab_size"] = config.process.vocab_size or spec.vocab_size
  sig["data.length"] = spec.length
  sig["data.num_classes"] = spec.num_classes
  if config.get("is_student", False):
    k = model_latent_dim(config)
    sig.update(latent=k, latent_entry=latent_entry(config))
    if k != 1:
      sig["model.latent_dim"] = k
  return sig


# ---------------------------------------------------------------------------
# Runs on disk and distillation configs.
# ---------------------------------------------------------------------------


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json a train or distill run wrote in its workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: config.teacher.workdir must be the --workdir of a finished "
      "`launch.train` (or `launch.distill`) run"
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# Model fields a student takes from its teacher's run and may not change: the
# student learns its teacher's marginals under the same training noise, and at
# step 0 it is compared with the teacher (the official code trains teacher and
# student at dropout 0.1 and the same label dropout).
TRAINING_DROPOUTS = ("dropout", "label_dropout")


def check_training_dropout(own_model, teacher_model, teacher_workdir: str) -> None:
  """Raises if a distillation config sets a training dropout other than its teacher's.

  own_model: the distillation config's own `model` section (None when the
  file sets none); teacher_model: the teacher run's. An unset field (absent
  or None) takes the teacher's value in `resolve`, so a student's dropout
  defaults to its teacher's; only an explicit different value is refused.
  """
  if own_model is None:
    return
  for f in TRAINING_DROPOUTS:
    mine, theirs = own_model.get(f), teacher_model.get(f)
    if mine is not None and theirs is not None and float(mine) != float(theirs):
      raise ValueError(
        f"config.model.{f}={mine} differs from the {f} {theirs} its teacher "
        f"({teacher_workdir}) trained with: a student trains at its teacher's {f}. "
        f"Leave config.model.{f} unset (the student takes the teacher's), or distil "
        f"from a teacher trained at {f}={mine}"
      )


def resolve(config) -> ml_collections.ConfigDict:
  """A distillation config made complete: data/process/model from the
  teacher's run (the file's own entries override), so that a student's
  config stands on its own (and a student can teach the next round).

  The student's dropout and label dropout are its teacher's: left unset they
  are copied, set to another value they raise (`check_training_dropout`)."""
  config = ml_collections.ConfigDict(config.to_dict())
  kind = config.teacher.kind
  if kind == "network":
    if not config.teacher.workdir:
      raise ValueError(
        "config.teacher.workdir is not set: give the --workdir of a finished "
        "launch.train run (e.g. --config.teacher.workdir=workdirs/digits_teacher)"
      )
    tconf = read_run_config(config.teacher.workdir)
    check_training_dropout(config.get("model"), tconf.model, config.teacher.workdir)
    for sec in ("data", "process", "model"):
      merged = ml_collections.ConfigDict(tconf[sec].to_dict())
      if sec in config and config[sec] is not None:
        # The file's own values win (e.g. --config.data.data_dir=...); an
        # unset (None) field keeps the teacher's.
        merged.update({k: v for k, v in config[sec].to_dict().items() if v is not None})
      config[sec] = merged
    if config.data.name != tconf.data.name:
      raise ValueError(
        f"config.data.name={config.data.name!r}: this config distils a teacher of "
        f"{config.data.name!r}, but the teacher in {config.teacher.workdir} was trained on "
        f"{tconf.data.name!r}; point config.teacher.workdir to a {config.data.name} teacher, "
        "or use a config for that data set"
      )
    if config.teacher.get("init_workdir"):
      raise ValueError(
        "config.teacher.init_workdir is for an ideal teacher's student; a network teacher's "
        "student starts from its teacher (config.teacher.workdir): unset init_workdir"
      )
  elif kind == "ideal":
    if config.teacher.get("workdir"):
      raise ValueError(
        f"config.teacher.workdir={config.teacher.workdir!r} is given, but this config's "
        "teacher is the exact ideal denoiser (config.teacher.kind='ideal'), not a network: "
        "drop config.teacher.workdir, or use a distillation config whose teacher is a "
        "network (e.g. configs/digits_distill.py)"
      )
    if config.data.name not in IDEAL_DATA:
      raise ValueError(
        f"config.teacher.kind='ideal' needs a data set whose exact law we have: "
        f"config.data.name in {IDEAL_DATA}, got {config.data.name!r}"
      )
    if config.teacher.get("init_workdir"):
      check_start_run(config, read_run_config(config.teacher.init_workdir))
  elif kind == "user":
    if config.teacher.get("workdir"):
      raise ValueError(
        f"config.teacher.workdir={config.teacher.workdir!r} is given, but this config's "
        "teacher is the one passed in (config.teacher.kind='user': "
        "distill.distill_student(config, workdir, teacher=...)): drop config.teacher.workdir, "
        "or set config.teacher.kind='network' to distil that run"
      )
    # No run to read them from: the file's own process (base_config()'s when
    # it sets none: a user teacher must match the process it was made for) and
    # its model fields over base_config()'s.
    base = base_config()
    own = lambda sec: config[sec].to_dict() if config.get(sec) is not None else {}
    if own("process").get("name"):
      base.process = ml_collections.ConfigDict({"vocab_size": None, **own("process")})
    base.model.update({k: v for k, v in own("model").items() if v is not None})
    config.process, config.model = base.process, base.model
    if config.teacher.get("init_workdir"):
      check_start_run(config, read_run_config(config.teacher.init_workdir))
  else:
    raise ValueError(
      f"config.teacher.kind={kind!r}; choose 'network' (a workdir of ours), "
      f"'ideal' (the exact denoiser of {IDEAL_DATA}) or 'user' (a distill.Teacher passed "
      "to distill_student / setup_student / quick_distill)"
    )
  config.is_student = True
  return config


# Data sets with an exact ideal teacher: tiny (enumeration) and markov
# (forward-backward on the chain).
IDEAL_DATA = ("tiny", "markov")


def check_start_run(config, run_config) -> None:
  """An ideal teacher's student can start from the run at
  config.teacher.init_workdir: a product network on the same data and process
  (the architecture is checked leaf by leaf when the weights are copied)."""
  where = f"config.teacher.init_workdir={config.teacher.init_workdir!r}"
  if run_config.get("is_student", False):
    raise ValueError(f"{where} is a distilled student; give a launch.train run (a product network)")
  if run_config.data.name != config.data.name:
    raise ValueError(f"{where} was trained on {run_config.data.name!r}, not {config.data.name!r}")
  for sec in ("data", "process"):
    mine = {k: v for k, v in config[sec].to_dict().items() if k != "data_dir"}
    theirs = {k: v for k, v in run_config[sec].to_dict().items() if k != "data_dir"}
    if mine != theirs:
      raise ValueError(
        f"{where}: its config.{sec} {theirs} differs from this config's {mine}; start from a "
        "run with the same data and process, or from a fresh network (init_workdir=None)"
      )
