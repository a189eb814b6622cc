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
Every check raises a ValueError that names the field and what it accepts.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from mixture_dd import networks, processes

SECTIONS = ("data", "process", "model", "loss", "optim", "train")
DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
EVAL_WEIGHTS = ("ema", "raw")  # which weights sampling and evaluation use


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every teacher config; experiment files override numbers."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config("digits")
  c.process = ml_collections.ConfigDict(dict(name="masked", vocab_size=None, schedule="loglinear"))
  c.model = ml_collections.ConfigDict(dict(
      width=128, depth=4, heads=4, mlp_ratio=4, dropout=0.0, positions="rope",
      class_conditional=False, label_dropout=0.1, dtype="float32"))
  c.loss = ml_collections.ConfigDict(dict(t_min=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=100, weight_decay=0.0, b1=0.9, b2=0.999, clip=1.0,
      ema_decay=0.999, ema_warmup=True, schedule="cosine"))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=128, num_steps=2000, log_every=50, ckpt_every=500, keep=3,
      sample_every=1000, sample_steps=64, num_samples=64, eval_weights="ema"))
  return c


def data_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The data section: the data set's defaults with `overrides` checked."""
  from mixture_dd.data import pipeline
  c = pipeline.default_data_config(name)
  unknown = set(overrides) - set(c)
  if unknown:
    raise ValueError(f"config.data: {sorted(unknown)} are not fields of {name!r}; "
                     f"it accepts {sorted(c)}")
  c.update(overrides)
  return c


def distill_base_config(preset: str = "sdtt") -> ml_collections.ConfigDict:
  """Defaults of a distillation config. data/process/model come from the
  teacher's run (config.teacher.workdir) unless the file sets them."""
  from mixture_dd import distill
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.teacher = ml_collections.ConfigDict(dict(kind="network", workdir=None, num_latents=16))
  c.distill = distill.preset(preset)
  c.loss = ml_collections.ConfigDict(dict(t_min=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=50, weight_decay=0.0, b1=0.9, b2=0.999, clip=1.0,
      ema_decay=0.99, ema_warmup=True, schedule="constant", latent_lr_mult=1.0))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=500, log_every=50, ckpt_every=250, keep=3,
      sample_every=0, sample_steps=8, num_samples=64, eval_weights="ema"))
  return c


def _require(cond, field, msg):
  if not cond:
    raise ValueError(f"config.{field}: {msg}")


def validate(config, spec) -> None:
  """Checks a teacher config against itself and the data's spec."""
  for sec in SECTIONS:
    _require(sec in config, sec, f"missing section; a config needs {SECTIONS}")
  vocab = config.process.vocab_size
  if vocab is not None:
    _require(int(vocab) >= spec.vocab_size, "process.vocab_size",
             f"{vocab} is smaller than the data's vocabulary ({spec.vocab_size} for "
             f"{spec.name}); set it to {spec.vocab_size} or leave it None")
  _require(config.process.name in processes.PROCESSES, "process.name",
           f"{config.process.name!r} is unknown; choose one of {processes.PROCESSES}")
  m = config.model
  _require(m.positions in networks.POSITIONS, "model.positions",
           f"{m.positions!r}; choose one of {networks.POSITIONS}")
  _require(m.width > 0 and m.heads > 0 and m.width % m.heads == 0, "model.width",
           f"width {m.width} must be a positive multiple of model.heads={m.heads}")
  _require(m.depth >= 1, "model.depth", f"must be >= 1, got {m.depth}")
  _require(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r}; choose one of {DTYPES}")
  _require(0.0 <= m.label_dropout < 1.0, "model.label_dropout", f"must be in [0, 1), got {m.label_dropout}")
  if m.class_conditional:
    _require(spec.num_classes > 0, "model.class_conditional",
             f"data set {spec.name} has no labels; set it to False")
  if "length" in m and m.length is not None:
    _require(m.length == spec.length, "model.length",
             f"{m.length} differs from the data's length {spec.length}")
  o = config.optim
  _require(o.lr > 0 and np.isfinite(o.lr), "optim.lr", f"must be a positive number, got {o.lr}")
  _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  _require(o.clip > 0, "optim.clip", f"must be > 0, got {o.clip}")
  _require(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", f"must be in [0, 1), got {o.ema_decay}")
  _require(o.get("latent_lr_mult", 1.0) > 0, "optim.latent_lr_mult",
           f"must be > 0, got {o.get('latent_lr_mult')}")
  _require(isinstance(o.get("ema_warmup", True), bool), "optim.ema_warmup",
           f"must be True or False, got {o.get('ema_warmup')!r}")
  _require(o.schedule in LR_SCHEDULES, "optim.schedule", f"{o.schedule!r}; choose one of {LR_SCHEDULES}")
  t = config.train
  _require(t.batch_size > 0, "train.batch_size", f"must be > 0, got {t.batch_size}")
  _require(t.num_steps > 0, "train.num_steps", f"must be > 0, got {t.num_steps}")
  _require(t.get("eval_weights", "ema") in EVAL_WEIGHTS, "train.eval_weights",
           f"{t.get('eval_weights')!r}; choose one of {EVAL_WEIGHTS}")
  for f in ("log_every", "ckpt_every", "keep"):
    _require(t[f] > 0, f"train.{f}", f"must be > 0, got {t[f]}")
  _require(0.0 <= config.loss.t_min < 1.0, "loss.t_min", f"must be in [0, 1), got {config.loss.t_min}")


def make_process(config, spec) -> processes.Process:
  pc = ml_collections.ConfigDict(config.process.to_dict())
  if pc.vocab_size is None:
    pc.vocab_size = spec.vocab_size
  return processes.make_process(pc)


def make_model(config, spec, process, latent: bool = False) -> networks.Denoiser:
  import jax.numpy as jnp
  m = config.model
  return networks.Denoiser(
      num_states=process.num_states, vocab_size=process.vocab_size, length=spec.length,
      width=m.width, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
      dropout=m.dropout, positions=m.positions,
      num_classes=spec.num_classes if m.class_conditional else 0,
      latent=latent, latent_entry=latent_entry(config) if latent else "add",
      mask_id=process.mask_id,
      dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32)


def entry_for_start(student_start: str | None) -> str:
  """The latent entry (networks.LatentEmbed) a distill.student_start needs."""
  return {"gate": "gate", "centred": "centred"}.get(student_start, "add")


def latent_entry(config) -> str:
  """The student's latent entry for its config.distill.student_start."""
  d = config.get("distill")
  return entry_for_start(d.get("student_start") if d is not None else None)


def model_signature(config, spec) -> dict:
  """What a checkpoint's parameters depend on; compared on restore."""
  sig = {f"model.{k}": v for k, v in config.model.to_dict().items()
         if k not in ("dropout", "label_dropout")}
  sig.update({f"process.{k}": v for k, v in config.process.to_dict().items()})
  sig["process.vocab_size"] = config.process.vocab_size or spec.vocab_size
  sig["data.length"] = spec.length
  sig["data.num_classes"] = spec.num_classes
  return sig
