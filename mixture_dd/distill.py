"""A Di4C distillation run from a config: a product (or mixture) teacher into a
mixture student.

`setup_student` resolves the config, loads the data (a registered data set or
a token array passed in) and the teacher (`load_teacher`: a run of ours, the
exact ideal denoiser, or a `di4c.Teacher` passed in) and builds the student
and its loss (`di4c.py`, the maths); `distill_student` hands that to the one
trainer (trainer.py: checkpoints, resume, sharding, provenance);
`quick_distill` runs it without checkpoints.
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
  checkpoints,
  configuration,
  denoisers,
  di4c,
  networks,
  runs,
  samplers,
  train_step,
  trainer,
  visualize,
)
from mixture_dd.data import pipeline
from mixture_dd.di4c import Teacher

log = logging.getLogger("mixture_dd")

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
    "config.teacher.kind='user' needs the teacher itself: pass teacher=mixture_dd.Teacher(...) "
    "(a run does not store a user teacher's function: pass it again to resume)"
  )


def load_teacher(
  config, spec, process, teacher: Teacher | None = None, teacher_config=None
) -> Teacher:
  """The teacher a resolved distillation config names, with its provenance.

  config.teacher.kind "user": `teacher` itself (`di4c.user_teacher` checks
  it); the other kinds take none. "ideal": `runs.ideal_teacher_of`.
  "network": the run at config.teacher.workdir (`runs.load_run`; its
  config.json is `teacher_config` where the caller has read it already), the
  weights its run evaluates (train.eval_weights): the EMA of a teacher of
  ours, the raw weights of an SDTT/MaskGIT-preset student teaching the next
  round (SDTT's di4c^2 loads the raw weights); a student run is a mixture
  teacher, whose weights are also the next round's start (`setup_student`).
  spec, process: the student's, which the teacher's run must share.
  """
  _check_teacher_arg(config.teacher.kind, teacher)
  if teacher is not None:
    return di4c.user_teacher(teacher, spec, process)
  if config.teacher.kind == "ideal":
    return runs.ideal_teacher_of(config, spec, process)
  workdir = config.teacher.workdir
  run = runs.load_run(workdir, config=teacher_config)
  shape = lambda s, p: dict(
    length=s.length, num_classes=s.num_classes, vocab_size=p.vocab_size, num_states=p.num_states
  )
  if shape(run.spec, run.process) != shape(spec, process):
    raise ValueError(
      f"the teacher run {workdir} has data and process {shape(run.spec, run.process)}, this "
      f"config {shape(spec, process)}: a student takes its teacher's data and process; drop "
      "the config.data / config.process fields that change them"
    )
  provenance = {
    "workdir": os.path.abspath(workdir),
    "step": run.step,
    "checksum": checkpoints.checksum(run.params),
  }
  return di4c.network_teacher(run.model, run.params, config.teacher.latent_nodes, provenance)


def setup_student(config, teacher: Teacher | None = None, tokens=None, labels=None) -> StudentSetup:
  """The student's pieces from a distillation config (resolved and validated here).

  teacher: the teacher of config.teacher.kind "user", any `Teacher` (its
  logits checked on a probe batch: `di4c.user_teacher`). tokens `[N, D]` int
  (labels `[N]`): the data as an array instead of a data set (config.data.name
  "array", or unset); its length and vocabulary come from the array unless
  the config sets them (`pipeline.array_source`), and the resolved config
  records them, so that `runs.load_run` rebuilds the student without them.
  """
  _check_teacher_arg(config.teacher.kind, teacher)
  config = _name_array_data(config, tokens, labels)
  # A network teacher's config.json, read once: `runs.resolve` completes the
  # student's config from it, `load_teacher` rebuilds the teacher with it.
  teacher_config = None
  if config.teacher.kind == "network":
    teacher_config = runs.teacher_run_config(config)
  config = runs.resolve(config, teacher_config)
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
  teacher = load_teacher(config, spec, process, teacher, teacher_config)
  if config.teacher.kind == "network" and teacher.component is not None:
    params = teacher.frozen  # next round: a student of ours starts from itself
  else:
    if config.teacher.kind == "network":
      teacher_params = teacher.frozen
    else:
      teacher_params = start_weights(config)
    params = di4c.initial_student(model, config.distill, config.seed, teacher_params)
  # Own buffers: the train step donates the student's state, and the teacher
  # (frozen) must not lose the arrays they would otherwise share.
  params = jax.tree.map(jnp.copy, params)
  loss_fn = di4c.student_loss(model, teacher, process, config.distill, config.model.label_dropout)
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


def start_weights(config):
  """The product network an ideal or user teacher's student starts from: the
  weights of the run config.teacher.init_workdir names (checked against the
  config by `runs.resolve`), or None for a fresh network."""
  workdir = config.teacher.get("init_workdir")
  return runs.load_run(workdir).params if workdir else None


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
