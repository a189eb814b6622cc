"""Runs on disk: a teacher's or a student's workdir.

* a run's config (`read_run_config`), and a distillation config made whole
  against its teacher's run (`resolve`), read once per run set-up;
* a run loaded (`load_run`): a distillation's teacher (`distill.load_teacher`),
  or a run to sample and evaluate;
* the exact ideal teacher of a distillation config, or a user's teacher
  passed in again, as a run of its own (`ideal_run`, `from_teacher`,
  `teacher_run`), so that evaluation scores it like a network teacher;
* a run's samples in one call (`sample`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  di4c,
  exact,
  networks,
  samplers,
  train_step,
)
from mixture_dd.data import markov, pipeline

# Data sets with an exact ideal teacher: tiny (enumeration) and markov
# (forward-backward on the chain).
IDEAL_DATA = ("tiny", "markov")

# ---------------------------------------------------------------------------
# A run's config, and a distillation config resolved against its teacher's run.
# ---------------------------------------------------------------------------


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json a train or distill run wrote in its workdir (fields
  renamed since it was written under their new names:
  `configuration.RENAMED`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: config.teacher.workdir must be the --workdir of a finished "
      "`launch.train` (or `launch.distill`) run"
    )
  with open(path) as f:
    # A run written before a field's rename reads with the new name.
    return configuration.rename_old_fields(ml_collections.ConfigDict(json.load(f)))


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


def teacher_run_config(config) -> ml_collections.ConfigDict:
  """The config.json of the run a network teacher's distillation config
  names (config.teacher.workdir)."""
  if not config.teacher.get("workdir"):
    raise ValueError(
      "config.teacher.workdir is not set: give the --workdir of a finished "
      "launch.train run (e.g. --config.teacher.workdir=workdirs/digits_teacher)"
    )
  return read_run_config(config.teacher.workdir)


def resolve(config, teacher_config=None) -> ml_collections.ConfigDict:
  """A distillation config made complete: data/process/model from the
  teacher's run (the file's own entries override), so that a student's
  config stands on its own (and a student can teach the next round).

  teacher_config: a network teacher's run config (`teacher_run_config`)
  where the caller has read it already, else read here. The student's
  dropout and label dropout are its teacher's: left unset they are copied,
  set to another value they raise (`check_training_dropout`)."""
  config = ml_collections.ConfigDict(config.to_dict())
  kind = config.teacher.kind
  if kind == "network":
    tconf = teacher_config if teacher_config is not None else teacher_run_config(config)
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
    base = configuration.base_config()
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
      f"'ideal' (the exact denoiser of {IDEAL_DATA}) or 'user' (a di4c.Teacher passed "
      "to distill_student / setup_student / quick_distill)"
    )
  config.is_student = True
  return config


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


# ---------------------------------------------------------------------------
# Runs loaded.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """A loaded run: its config, data spec, process, network and parameters.

  step: the checkpoint step the parameters come from; meta: what the run
  recorded (kind, data, and for a student its teacher's provenance).
  denoise_fn: a run with no network (model None), the exact ideal teacher:
  its product denoiser, called with `params`.
  """

  config: ml_collections.ConfigDict
  spec: pipeline.DataSpec
  process: Any
  model: networks.Transformer | None
  params: Any
  is_student: bool
  step: int = -1
  meta: dict = dataclasses.field(default_factory=dict)
  workdir: str = ""
  denoise_fn: denoisers.Denoiser | None = None

  def denoiser(self, labels=None) -> denoisers.Denoiser:
    """The samplers' denoiser: the product network, or the student as a
    mixture (a fresh latent per sequence per call), with labels bound."""
    if self.denoise_fn is not None:
      return denoisers.with_labels(self.denoise_fn, labels)
    net = denoisers.from_network(self.model)
    if self.is_student:
      net = denoisers.mixture(net)
    return denoisers.with_labels(net, labels)

  def describe(self) -> str:
    """One line naming the run, its step and (a student) its teacher's step."""
    if self.denoise_fn is not None:
      return f"{self.meta.get('description')} (checksum {self.meta.get('checksum')})"
    kind = "student" if self.is_student else "teacher"
    text = f"{kind} {self.workdir or '?'} at step {self.step}"
    prov = self.meta.get("provenance") or {}
    if "step" in prov:
      text += f" (distilled from {prov.get('workdir')} at step {prov['step']})"
    elif prov.get("kind") == "ideal":
      text += f" (distilled from the exact ideal teacher, checksum {prov.get('checksum')})"
    elif prov:
      text += f" (distilled from {', '.join(f'{k}={v}' for k, v in sorted(prov.items()))})"
    return text


def load_run(workdir: str, ema: bool | None = None, config=None) -> Run:
  """Loads the config and newest good parameters of a train/distill workdir.

  ema=None follows the run's config.train.eval_weights ("ema" or "raw").
  config: the run's config.json where the caller has read it already
  (`read_run_config`), else read here.
  """
  if config is None:
    config = read_run_config(workdir)
  spec = pipeline.data_spec(config.data)
  process = configuration.make_process(config, spec)
  is_student = bool(config.get("is_student", False))
  model = configuration.make_model(config, spec, process, latent=is_student)
  abstract = jax.eval_shape(lambda: train_step.init_params(model, 0))
  if ema is None:
    ema = config.train.get("eval_weights", "ema") == "ema"
  params, meta = checkpoints.load_params(
    workdir, abstract, configuration.model_signature(config, spec), ema=ema
  )
  return Run(config, spec, process, model, params, is_student, int(meta["step"]), meta, workdir)


def ideal_teacher_of(config, spec, process) -> di4c.Teacher:
  """The exact ideal teacher a distillation config names (config.teacher.kind
  "ideal"): of the Markov chain the markov data set samples from, or of a
  tiny family; spec and process: the config's."""
  if spec.name == "markov":
    # The chain the data set samples from (as builders.Markov makes it).
    return di4c.chain_teacher(process, *markov.make_chain(config.data.vocab_size, config.data.seed))
  probs = exact.make_family(config.data.family, spec.vocab_size, spec.length, config.data.seed)
  return di4c.ideal_teacher(process, probs, spec.length)


def ideal_run(config) -> Run:
  """The exact ideal teacher of a distillation config (config.teacher.kind
  "ideal"; a student run's config will do) as a run without a network.

  Only data and process are read (as an ideal config sets them itself), so a
  student whose start run (teacher.init_workdir) has since gone still loads.
  """
  if config.teacher.kind != "ideal" or config.data.name not in IDEAL_DATA:
    raise ValueError(
      f"ideal_run needs config.teacher.kind='ideal' on {IDEAL_DATA}; got kind "
      f"{config.teacher.kind!r} on {config.data.name!r} (load a network teacher with load_run)"
    )
  config = ml_collections.ConfigDict(config.to_dict())
  spec = pipeline.data_spec(config.data)
  process = configuration.make_process(config, spec)
  teacher = ideal_teacher_of(config, spec, process)
  meta = {"kind": "ideal", "description": teacher.description, **teacher.provenance}
  config.is_student = False  # the teacher's own view: a product denoiser
  return Run(
    config, spec, process, None, teacher.frozen, False, meta=meta, denoise_fn=teacher.denoise
  )


def from_teacher(teacher: di4c.Teacher, student: Run) -> Run:
  """A teacher of one's own (config.teacher.kind "user") as a run without a
  network: the teacher of `student`, for `sample` and `evaluate.evaluate`.

  A run records no user teacher's function, so the caller passes it again;
  it must be the one the student's checkpoints name (its provenance: the
  checksum of its frozen parameters unless it brought one), else ValueError.
  Its config, data spec and process are the student's. Evaluation metrics
  come from the data set's registry entry: a student of a registered data
  set evaluates as any other; a token array (data "array") has no scorer, so
  `evaluate.evaluate` refuses it: sample both with `sample` and compare them.
  """
  if student.config.teacher.kind != "user":
    raise ValueError(
      f"from_teacher is for a student of a user teacher; {student.workdir or 'this run'} was "
      f"distilled from a {student.config.teacher.kind!r} teacher: load it with teacher_run"
    )
  teacher = di4c.user_teacher(teacher, student.spec, student.process)
  recorded = student.meta.get("provenance")
  if recorded is not None and recorded != teacher.provenance:
    raise ValueError(
      f"teacher {teacher.description!r} (provenance {teacher.provenance}) is not the one "
      f"{student.workdir or 'the student'} was distilled from (provenance {recorded}): pass "
      "the same teacher (frozen parameters, or the provenance it was given)"
    )
  config = ml_collections.ConfigDict(student.config.to_dict())
  config.is_student = False  # the teacher's own view: a product denoiser
  meta = {
    "kind": "user",
    "description": teacher.description,
    "checksum": checkpoints.checksum(teacher.frozen),
    "provenance": teacher.provenance,
  }
  return Run(
    config,
    student.spec,
    student.process,
    None,
    teacher.frozen,
    False,
    meta=meta,
    denoise_fn=teacher.denoise,
  )


def teacher_run(student: Run, teacher: di4c.Teacher | None = None) -> Run:
  """The teacher a student run was distilled from: its network run
  (config.teacher.workdir), the exact ideal teacher its config names, or
  (config.teacher.kind "user") `teacher`, passed again (`from_teacher`)."""
  kind = student.config.teacher.kind
  if kind == "user":
    if teacher is None:
      raise ValueError(
        f"{student.workdir or 'this student'} was distilled from a user teacher, whose "
        "function a run does not store: pass it, teacher_run(student, teacher)"
      )
    return from_teacher(teacher, student)
  if teacher is not None:
    raise ValueError(f"a {kind!r} teacher is loaded from the student's config: drop teacher=")
  if kind == "ideal":
    return ideal_run(student.config)
  return load_run(student.config.teacher.workdir)


def sample(run: Run, num: int, num_steps: int, seed: int = 0, labels=None, **kwargs) -> np.ndarray:
  """`num` samples `[num, D]` int32 of a run in `num_steps` denoiser calls.

  The analytic sampler from the prior (`samplers.sample`; kwargs: grid,
  final, temperature...), key(seed); labels `[num]` for a class-conditional
  run. Each call builds the denoiser afresh, so compiles the sampler again:
  for many draws call samplers.sample with one `run.denoiser()`.
  """
  x = samplers.sample(
    jax.random.key(seed),
    run.process,
    run.denoiser(labels),
    run.params,
    num,
    run.spec.length,
    num_steps,
    **kwargs,
  )
  return np.asarray(x)
