"""Finished runs on disk: a teacher's or a student's workdir, loaded for
sampling and evaluation; the exact ideal teacher of a distillation config, or
a user's teacher passed in again, as a run of its own (`ideal_run`,
`from_teacher`, `teacher_run`), so that evaluation scores it like a network
teacher; and a run's samples in one call (`sample`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from mixture_dd import configuration, denoisers, di4c, distill, networks, samplers, trainer
from mixture_dd.data import pipeline


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


def load_run(workdir: str, ema: bool | None = None) -> Run:
  """Loads the config and newest good parameters of a train/distill workdir.

  ema=None follows the run's config.train.eval_weights ("ema" or "raw").
  """
  config = configuration.read_run_config(workdir)
  spec = pipeline.data_spec(config.data)
  process = configuration.make_process(config, spec)
  is_student = bool(config.get("is_student", False))
  model = configuration.make_model(config, spec, process, latent=is_student)
  abstract = jax.eval_shape(lambda: trainer.init_params(model, 0))
  if ema is None:
    ema = config.train.get("eval_weights", "ema") == "ema"
  params, meta = trainer.load_params(
    workdir, abstract, configuration.model_signature(config, spec), ema=ema
  )
  return Run(config, spec, process, model, params, is_student, int(meta["step"]), meta, workdir)


def ideal_run(config) -> Run:
  """The exact ideal teacher of a distillation config (config.teacher.kind
  "ideal"; a student run's config will do) as a run without a network.

  Only data and process are read (as an ideal config sets them itself), so a
  student whose start run (teacher.init_workdir) has since gone still loads.
  """
  if config.teacher.kind != "ideal" or config.data.name not in configuration.IDEAL_DATA:
    raise ValueError(
      f"ideal_run needs config.teacher.kind='ideal' on {configuration.IDEAL_DATA}; got kind "
      f"{config.teacher.kind!r} on {config.data.name!r} (load a network teacher with load_run)"
    )
  config = ml_collections.ConfigDict(config.to_dict())
  spec = pipeline.data_spec(config.data)
  process = configuration.make_process(config, spec)
  teacher = distill.load_teacher(config, spec, process)
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
    "checksum": trainer.checksum(teacher.frozen),
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
