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
  teacher              kind ("network" | "ideal" | "user"), workdir, latent_nodes
                       (a mixture teacher's averaging nodes), restart_if_changed;
                       optional init_workdir (an ideal or user teacher's
                       student starts from that run's weights)
  distill              a preset of the Di4C knobs (`distill_preset`)
and takes data/process/model from its teacher's run (`runs.resolve`); an ideal
teacher's config sets them itself, a user teacher's (a `di4c.Teacher`
passed in) too, over base_config()'s process and model. Data may be a token
array passed in (data.name "array", `pipeline.array_source`).
Validation happens here, once (`validate`); every check raises a ValueError
that names the field and what it accepts. The modules downstream assume a
valid config.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from mixture_dd import networks, processes
from mixture_dd.data import pipeline

SECTIONS = ("data", "process", "model", "loss", "optim", "train")
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
EVAL_WEIGHTS = ("ema", "raw")  # which weights sampling and evaluation use


# The student-only model fields (a product teacher ignores them), each with its default: the
# base config's value and the value a field has where unset (None, or a run config written
# before the field existed); a teacher (latent=False) is built with these values.
LATENT_MODEL_DEFAULTS = dict(
  # A student's latent: lambda in [0, 1]^latent_dim, latent_dim independent
  # uniforms, each embedded (an int >= 1; 1 is the paper's scalar latent).
  # A product teacher has no latent path and ignores it.
  latent_dim=1,
  # Where the latent enters: "global" (the paper: every position, every
  # block) or "blocks" (local latents: latent_dim contiguous blocks of
  # positions, coordinate g conditioning block g only, after the trunk;
  # latent_dim must divide the data's length). A product teacher ignores it.
  latent_scope="global",
  # Hidden SiLU layers of the latent's embedding MLP (an int >= 1; 1 is the
  # paper's). A product teacher ignores it.
  latent_depth=1,
  # "none" (the paper) | "learned": a student-only, zero-initialised absolute
  # position embedding, so that with rope its mixture components can differ
  # between positions the input does not tell apart (all masked at t = 1).
  # A product teacher ignores it.
  latent_positions="none",
  # Local latents' blocks: "none" (the same contiguous blocks at every
  # call) | "random" (rotated by a random offset per sequence at every
  # sampler step and per example in the loss, so that block boundaries
  # move between steps; the student also learns each position's place in
  # its block). Needs latent_scope "blocks". A product teacher ignores it.
  latent_shift="none",
  # Local latents' coordinates per block (an int >= 1; 1: one scalar per
  # block): each block's mixture is indexed by a vector in [0, 1]^m, as the
  # global latent is by latent_dim coordinates. Needs latent_scope "blocks".
  # A product teacher ignores it.
  latent_block_dim=1,
  # Local latents' law: "none" (a product of one mixture per block) | "halves"
  # (every position also conditioned on a second partition's latent, the
  # blocks moved by half a block, so neighbouring blocks share latents; lam
  # has 2 latent_dim coordinates). Needs latent_scope "blocks",
  # latent_block_dim 1 and an even block size. A product teacher ignores it.
  latent_coupling="none",
)


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
      **LATENT_MODEL_DEFAULTS,  # the student-only fields, their legal values beside them
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
      # A mixture teacher (a student of ours, di4c^2): its marginals average
      # its components over this many stratified latents (not the loss's L,
      # distill.num_latents).
      latent_nodes=16,
      restart_if_changed=False,
    )
  )
  # Filled from the teacher's run by `runs.resolve`; only a data_dir of one's own,
  # and the name of the data set the config is meant for (None: any; else a
  # teacher of another data set is refused).
  c.data = ml_collections.ConfigDict(
    dict(
      name=ml_collections.config_dict.placeholder(str),
      data_dir=ml_collections.config_dict.placeholder(str),
    )
  )
  c.distill = distill_preset(preset)
  # Filled from the teacher's run by `runs.resolve`, as data is; latent_dim (see
  # base_config) may be set here, e.g. --config.model.latent_dim=4 (None:
  # the teacher run's, 1 for a product teacher's).
  # latent_scope likewise (e.g. --config.model.latent_scope=blocks).
  c.model = ml_collections.ConfigDict(
    dict(
      latent_dim=ml_collections.config_dict.placeholder(int),
      latent_scope=ml_collections.config_dict.placeholder(str),
      latent_depth=ml_collections.config_dict.placeholder(int),
      latent_positions=ml_collections.config_dict.placeholder(str),
      latent_shift=ml_collections.config_dict.placeholder(str),
      latent_block_dim=ml_collections.config_dict.placeholder(int),
      latent_coupling=ml_collections.config_dict.placeholder(str),
    )
  )
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
    distill_mode="separate",
    distill_lo=0.01,
    distill_hi=0.02,
    distill_p_lo=0.5,
    distill_threshold=0.0,
    distill_weight=1.0,
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
    distill_mode="same",
    distill_lo=0.0,
    distill_hi=0.0,
    distill_p_lo=0.0,
    distill_threshold=0.05,
    distill_weight=20.0,
    alpha_scale=0.1,
    data_weight=0.0,
    marginal_weight=1.0,
    small_t_prob=0.0,
    small_t_max=0.0,
    teacher_step="confidence",
    # Gumbel temperature of the teacher's confidence step at progress r = 1 - t:
    # confidence_temperature * max(0, 1 - r T / (T - 1)), T = confidence_steps,
    # the MaskGIT sampler's temperature at the step that starts at r = k / T
    # (see `di4c.confidence_step_temperature`).
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
    distill_mode="same",
    distill_lo=0.0,
    distill_hi=0.0,
    distill_p_lo=0.0,
    distill_threshold=0.02,
    distill_weight=1.0,
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
  distill_threshold=0.05,  # distillation term on t < this, consistency above
  data_weight=1.0,  # 0 = di4c, 1 = di4c-d (correlation of real x0)
  alpha_scale=1.0,  # alpha_t = alpha_scale * sigmoid(20 (t - 0.5))
)
# How the student starts from its teacher (see `di4c.start_student`).
STUDENT_STARTS = ("exact", "gate", "fan_in", "centred", "normal")
DEFAULT_START = "centred"
TEACHER_STEPS = ("analytic", "confidence")
T_SAMPLINGS = ("uniform", "per_batch")
DELTAS = ("loguniform", "const", "min_frac")
DISTILL_MODES = ("separate", "same")
# How the loss draws each example's L latents (`denoisers.draw_latents`): "iid" (the paper)
# or "stratified" (one per stratum [j / L, (j + 1) / L) of each coordinate).
LATENT_SAMPLINGS = ("iid", "stratified")
# The data term's weight alpha_t: "sigmoid" (every official setup: alpha_scale * sigmoid(20 (t -
# 0.5)), on at high noise only) or "const" (alpha_scale at every t). With alpha_t = 1 and a
# teacher whose marginals are the posterior's, data term + teacher-marginal term is in
# expectation the mixture's negative log-likelihood of real x0 up to a constant (a proper
# score: its minimiser is the posterior joint), so "const" with alpha_scale 1 fits the joint
# at every t, not only where the sigmoid is on (docs/method.md section 4).
ALPHA_SCHEDULES = ("sigmoid", "const")


def distill_preset(name: str, **overrides) -> ml_collections.ConfigDict:
  """The `distill` config section of a reference setup, with overrides."""
  if name not in PRESETS:
    raise ValueError(f"config.distill.preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
  c = ml_collections.ConfigDict(
    dict(
      PRESETS[name],
      preset=name,
      latent_chunks=1,
      latent_sampling="iid",  # "iid" (the paper) | "stratified" (LATENT_SAMPLINGS)
      alpha_schedule="sigmoid",  # "sigmoid" (the paper) | "const" (ALPHA_SCHEDULES)
      # Probability in [0, 1) that an example's t is exactly 1, the time of every sampler's
      # first step (0: the paper's time law; not in the paper).
      top_t_prob=0.0,
      student_start=DEFAULT_START,
      latent_init_scale=1.0,
    )
  )
  unknown = set(overrides) - set(c)
  if unknown:
    raise ValueError(f"config.distill: unknown fields {sorted(unknown)}; accepted: {sorted(c)}")
  c.update(overrides)
  return c


def validate_distill(distill_cfg) -> None:
  """Checks a `distill` config section (`distill_preset`): each field against what it accepts."""

  def req(cond, field, msg):
    if not cond:
      raise ValueError(f"config.distill.{field}: {msg}")

  req(
    distill_cfg.preset in PRESETS,
    "preset",
    f"{distill_cfg.preset!r} is unknown; choose one of {sorted(PRESETS)}",
  )
  req(distill_cfg.num_latents >= 1, "num_latents", f"must be >= 1, got {distill_cfg.num_latents}")
  req(
    0.0 <= distill_cfg.get("top_t_prob", 0.0) < 1.0,
    "top_t_prob",
    f"must be in [0, 1), got {distill_cfg.get('top_t_prob')}",
  )
  req(
    distill_cfg.get("alpha_schedule", "sigmoid") in ALPHA_SCHEDULES,
    "alpha_schedule",
    f"{distill_cfg.get('alpha_schedule')!r}; choose one of {ALPHA_SCHEDULES}",
  )
  req(
    distill_cfg.get("latent_sampling", "iid") in LATENT_SAMPLINGS,
    "latent_sampling",
    f"{distill_cfg.get('latent_sampling')!r}; choose one of {LATENT_SAMPLINGS}",
  )
  req(
    distill_cfg.latent_chunks >= 1 and distill_cfg.num_latents % distill_cfg.latent_chunks == 0,
    "latent_chunks",
    f"must divide num_latents={distill_cfg.num_latents}, got {distill_cfg.latent_chunks}",
  )
  req(
    distill_cfg.t_sampling in T_SAMPLINGS,
    "t_sampling",
    f"{distill_cfg.t_sampling!r}; choose one of {T_SAMPLINGS}",
  )
  req(distill_cfg.delta in DELTAS, "delta", f"{distill_cfg.delta!r}; choose one of {DELTAS}")
  req(
    0 < distill_cfg.delta_lo <= distill_cfg.delta_hi < 1,
    "delta_lo",
    f"need 0 < delta_lo <= delta_hi < 1, got {distill_cfg.delta_lo}, {distill_cfg.delta_hi}",
  )
  req(
    distill_cfg.distill_mode in DISTILL_MODES,
    "distill_mode",
    f"{distill_cfg.distill_mode!r}; choose one of {DISTILL_MODES}",
  )
  if distill_cfg.distill_mode == "separate":
    req(
      0 < distill_cfg.distill_lo <= distill_cfg.distill_hi < 1,
      "distill_lo",
      "need 0 < distill_lo <= distill_hi < 1, got "
      f"{distill_cfg.distill_lo}, {distill_cfg.distill_hi}",
    )
  req(0.0 <= distill_cfg.t_min < 1.0, "t_min", f"must be in [0, 1), got {distill_cfg.t_min}")
  req(
    distill_cfg.latent_init_scale >= 0,
    "latent_init_scale",
    f"must be >= 0, got {distill_cfg.latent_init_scale}",
  )
  req(
    distill_cfg.student_start in STUDENT_STARTS,
    "student_start",
    f"{distill_cfg.student_start!r}; choose one of {STUDENT_STARTS}",
  )
  req(
    distill_cfg.student_start not in ("fan_in", "centred", "normal")
    or distill_cfg.latent_init_scale > 0,
    "latent_init_scale",
    f"student_start={distill_cfg.student_start!r} needs latent_init_scale > 0 (0 is the "
    "exact start: use student_start='exact')",
  )
  req(
    distill_cfg.teacher_step in TEACHER_STEPS,
    "teacher_step",
    f"{distill_cfg.teacher_step!r}; choose one of {TEACHER_STEPS}",
  )
  if distill_cfg.teacher_step == "confidence":
    req(
      _is_int(distill_cfg.get("confidence_steps")) and distill_cfg.confidence_steps >= 2,
      "confidence_steps",
      "teacher_step='confidence' needs the teacher sampler's step count T >= 2 (its Gumbel "
      "temperature ramps over T - 1 steps; MaskGIT: 8), got "
      f"{distill_cfg.get('confidence_steps')!r}",
    )
  req(
    0.0 <= distill_cfg.distill_p_lo <= 1.0,
    "distill_p_lo",
    f"must be in [0, 1], got {distill_cfg.distill_p_lo}",
  )
  for f in (
    "distill_weight",
    "data_weight",
    "alpha_scale",
    "marginal_weight",
    "confidence_temperature",
  ):
    req(distill_cfg[f] >= 0, f, f"must be >= 0, got {distill_cfg[f]}")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _require(cond, field, msg):
  if not cond:
    raise ValueError(f"config.{field}: {msg}")


# Config fields renamed since runs were first written, per section: old -> new.
RENAMED = {
  "teacher": {"num_latents": "latent_nodes"},
  "distill": {
    f"distil_{f}": f"distill_{f}" for f in ("mode", "lo", "hi", "p_lo", "threshold", "weight")
  },
}


def check_renamed(config) -> None:
  """Raises, naming the new field, where a config still sets a renamed one."""
  for sec, names in RENAMED.items():
    section = config.get(sec)
    old = sorted(f for f in names if section is not None and f in section)
    if old:
      new = ", ".join(f"config.{sec}.{names[f]}" for f in old)
      raise ValueError(
        f"config.{sec}: {old} were renamed; set {new} instead (teacher.latent_nodes: a "
        "mixture teacher's averaging nodes, not the loss's distill.num_latents)"
        if sec == "teacher"
        else f"config.{sec}: {old} were renamed; set {new} instead"
      )


def rename_old_fields(config) -> ml_collections.ConfigDict:
  """A run's config written before the renames (`RENAMED`), with each old
  field under its new name, so that a run on disk stays readable."""
  config = ml_collections.ConfigDict(config.to_dict())
  for sec, names in RENAMED.items():
    section = config.get(sec)
    for old, new in names.items():
      if section is not None and old in section:
        value = section[old]
        del section[old]
        if new not in section:
          section[new] = value
  return config


def validate(config, spec) -> None:
  """Checks a (resolved) teacher or student config against itself and the data's spec."""
  check_renamed(config)
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
  lat = latent_model_fields(config)
  k, shift, block_dim = lat["latent_dim"], lat["latent_shift"], lat["latent_block_dim"]
  _require(
    _is_int(k) and k >= 1,
    "model.latent_dim",
    f"must be an integer >= 1 (1: the paper's scalar latent), got {m.get('latent_dim')!r}",
  )
  _require(
    _is_int(lat["latent_depth"]) and lat["latent_depth"] >= 1,
    "model.latent_depth",
    f"must be an integer >= 1 (1: the paper's one hidden layer), got {m.get('latent_depth')!r}",
  )
  _require(
    lat["latent_positions"] in networks.LATENT_POSITIONS,
    "model.latent_positions",
    f"{m.get('latent_positions')!r}; choose one of {networks.LATENT_POSITIONS}",
  )
  scope = lat["latent_scope"]
  _require(
    scope in networks.LATENT_SCOPES,
    "model.latent_scope",
    f"{scope!r}; choose one of {networks.LATENT_SCOPES}",
  )
  _require(
    shift in networks.LATENT_SHIFTS,
    "model.latent_shift",
    f"{m.get('latent_shift')!r}; choose one of {networks.LATENT_SHIFTS}",
  )
  _require(
    shift == "none" or scope == "blocks",
    "model.latent_shift",
    f"{shift!r} rotates local latents' blocks: set "
    "model.latent_scope=blocks (with model.latent_dim the number of blocks) or leave it 'none'",
  )
  _require(
    _is_int(block_dim) and block_dim >= 1,
    "model.latent_block_dim",
    f"must be an integer >= 1 (1: one scalar per block), got {m.get('latent_block_dim')!r}",
  )
  _require(
    block_dim == 1 or scope == "blocks",
    "model.latent_block_dim",
    f"{block_dim!r} gives each local block a vector latent: set "
    "model.latent_scope=blocks, or for one global vector latent set model.latent_dim instead",
  )
  coupling = lat["latent_coupling"]
  _require(
    coupling in networks.LATENT_COUPLINGS,
    "model.latent_coupling",
    f"{m.get('latent_coupling')!r}; choose one of {networks.LATENT_COUPLINGS}",
  )
  _require(
    coupling == "none" or (scope == "blocks" and block_dim == 1),
    "model.latent_coupling",
    f"{coupling!r} couples local latents' blocks: set model.latent_scope=blocks and "
    "model.latent_block_dim=1, or leave it 'none'",
  )
  if coupling != "none" and _is_int(k) and k >= 1:
    _require(
      spec.length % k == 0 and (spec.length // k) % 2 == 0,
      "model.latent_coupling",
      f"{coupling!r} moves blocks of {spec.length} / model.latent_dim={k} positions by half "
      "a block: choose a model.latent_dim that divides the length into blocks of an even size",
    )
  if shift != "none" and _is_int(k):
    _require(
      spec.length > k,
      "model.latent_shift",
      f"{shift!r} rotates blocks of {spec.length} / model.latent_dim="
      f"{k} position(s): with blocks of one position there is nothing "
      "to rotate; use fewer blocks or leave it 'none'",
    )
  if scope == "blocks" and _is_int(k):
    _require(
      spec.length % k == 0,
      "model.latent_scope",
      f"'blocks' splits the data's {spec.length} positions into model.latent_dim="
      f"{k} equal blocks; set model.latent_dim to a divisor of "
      f"{spec.length}",
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
    **(latent_model_fields(config) if latent else LATENT_MODEL_DEFAULTS),
  )


def latent_model_fields(config) -> dict:
  """{field: config.model.<field>, or its LATENT_MODEL_DEFAULTS value where unset}."""
  get = config.model.get
  return {k: d if get(k) is None else get(k) for k, d in LATENT_MODEL_DEFAULTS.items()}


def entry_for_start(student_start: str | None) -> str:
  """The latent entry (networks.LatentEmbed) a distill.student_start needs."""
  return {"gate": "gate", "centred": "centred"}.get(student_start, "add")


def latent_entry(config) -> str:
  """The student's latent entry for its config.distill.student_start."""
  distill_cfg = config.get("distill")
  start = distill_cfg.get("student_start") if distill_cfg is not None else None
  return entry_for_start(start)


# Model fields a checkpoint does not sign as they are: the parameters do not
# depend on the first three; the student's latent fields are signed below, in
# forms that checkpoints from before each field existed still match.
_UNSIGNED_MODEL_FIELDS = (
  "dropout", "label_dropout", "dtype",
  "latent_dim", "latent_scope", "latent_depth", "latent_positions", "latent_shift",
  "latent_block_dim", "latent_coupling",
)  # fmt: skip


def model_signature(config, spec) -> dict:
  """What a checkpoint's parameters depend on; compared on restore.

  A student (config.is_student) adds its latent path's entry and its
  latent_dim (as "latent": checkpoints from before latent_dim existed saved
  True there, and True == 1, so they still load as latent_dim 1; a k > 1
  student also signs "model.latent_dim", which names the config field when
  it is refused; "model.latent_scope" is "blocks" for local latents and
  None for the global one, which is what checkpoints from before the field
  existed read as)."""
  # Parameters are float32 at any activation dtype, so model.dtype is free
  # to change between a checkpoint and its use (as dropout is).
  sig = {
    f"model.{k}": v for k, v in config.model.to_dict().items() if k not in _UNSIGNED_MODEL_FIELDS
  }
  sig.update({f"process.{k}": v for k, v in config.process.to_dict().items()})
  sig["process.vocab_size"] = config.process.vocab_size or spec.vocab_size
  sig["data.length"] = spec.length
  sig["data.num_classes"] = spec.num_classes
  if config.get("is_student", False):
    lat = latent_model_fields(config)
    k = lat["latent_dim"]
    sig.update(latent=k, latent_entry=latent_entry(config))
    if k != 1:
      sig["model.latent_dim"] = k
    # None for global: what checkpoints from before the field read as.
    scope = lat["latent_scope"]
    sig["model.latent_scope"] = None if scope == "global" else scope
    for field in (
      "latent_depth", "latent_positions", "latent_shift", "latent_block_dim", "latent_coupling"
    ):  # fmt: skip
      if lat[field] != LATENT_MODEL_DEFAULTS[field]:  # unsigned at the default: as earlier ones
        sig[f"model.{field}"] = lat[field]
  return sig
