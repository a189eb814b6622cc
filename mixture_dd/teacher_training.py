"""The teacher: a product denoiser trained by the denoising loss.

`setup_teacher(config)` builds what a teacher run needs from a config;
`train_teacher(config, workdir)` hands it to the one trainer (trainer.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from mixture_dd import (
  configuration,
  denoisers,
  losses,
  networks,
  samplers,
  train_step,
  trainer,
  visualize,
)
from mixture_dd.data import pipeline


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
  """A teacher run's pieces: its config, data, process, network and loss.

  loss_fn(params, batch, key, frozen=None) -> (loss, metrics).
  """

  config: Any
  spec: pipeline.DataSpec
  source: Any
  process: Any
  model: networks.Transformer
  loss_fn: Callable


def setup_teacher(config) -> TeacherSetup:
  """The teacher's pieces from a config (validated here, once)."""
  spec, source = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  process.check_tokens(source.head(1000).tokens, f"data set {spec.name} tokens")
  model = configuration.make_model(config, spec, process)
  return TeacherSetup(config, spec, source, process, model, teacher_loss_fn(config, model, process))


def teacher_loss_fn(config, model, process) -> Callable:
  """`(params, batch, key, frozen=None) -> (loss, metrics)`: the teacher's
  objective with config.loss.t_min and (class-conditional models) label dropout."""
  denoise = teacher_denoiser(model, config.model.label_dropout)

  def loss_fn(params, batch, key, frozen=None):
    del frozen
    return losses.teacher_loss(
      denoise,
      params,
      process,
      batch["tokens"],
      key,
      t_min=config.loss.t_min,
      labels=batch["labels"] if model.num_classes else None,
    )

  return loss_fn


def teacher_denoiser(model, label_dropout: float = 0.0) -> denoisers.Denoiser:
  """The network in train mode with classifier-free guidance's label dropout
  (both drawn from the key the loss passes)."""
  net = denoisers.from_network(model, train=True)

  def denoise(params, x_t, t, key, lam=None, labels=None):
    k_drop, k_lab = jax.random.split(key)
    labels = losses.drop_labels(k_lab, labels, label_dropout, model.num_classes)
    return net(params, x_t, t, k_drop, labels=labels)

  return denoise


def teacher_task(setup: TeacherSetup) -> trainer.Task:
  """The trainer's view of a teacher run."""
  c, spec, process = setup.config, setup.spec, setup.process
  denoise = denoisers.from_network(setup.model)

  def sample_fn(params, key, num):
    return samplers.sample(key, process, denoise, params, num, spec.length, c.train.sample_steps)

  return trainer.Task(
    desc="teacher",
    loss_fn=setup.loss_fn,
    params=train_step.init_params(setup.model, c.seed),
    batcher=pipeline.make_batcher(
      setup.source,
      c.train.batch_size,
      seed=c.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      vocab_size=spec.vocab_size,
    ),
    signature=configuration.model_signature(c, spec),
    meta={"kind": "teacher", "data": spec.name},
    spec=spec,
    sample_hook=visualize.sample_hook(sample_fn, spec, "teacher", c.train.num_samples),
  )


def train_teacher(config, workdir: str) -> train_step.TrainState:
  """Trains (or resumes, or finds finished) a teacher; checkpoints in workdir.

  Raises trainer.Preempted after a preemption save.
  """
  return trainer.run(teacher_task(setup_teacher(config)), config, workdir)
