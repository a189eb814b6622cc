"""Finished runs on disk: a teacher's or a student's workdir, loaded for
sampling and evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from mixture_dd import configuration, denoisers, networks, trainer
from mixture_dd.data import pipeline


@dataclasses.dataclass(frozen=True)
class Run:
  """A loaded run: its config, data spec, process, network and parameters.

  step: the checkpoint step the parameters come from; meta: what the run
  recorded (kind, data, and for a student its teacher's provenance).
  """

  config: ml_collections.ConfigDict
  spec: pipeline.DataSpec
  process: Any
  model: networks.Transformer
  params: Any
  is_student: bool
  step: int = -1
  meta: dict = dataclasses.field(default_factory=dict)
  workdir: str = ""

  def denoiser(self, labels=None) -> denoisers.Denoiser:
    """The samplers' denoiser: the product network, or the student as a
    mixture (a fresh latent per sequence per call), with labels bound."""
    net = denoisers.from_network(self.model)
    if self.is_student:
      net = denoisers.mixture(net)
    return denoisers.with_labels(net, labels)

  def describe(self) -> str:
    """One line naming the run, its step and (a student) its teacher's step."""
    kind = "student" if self.is_student else "teacher"
    text = f"{kind} {self.workdir or '?'} at step {self.step}"
    prov = self.meta.get("provenance") or {}
    if "step" in prov:
      text += f" (distilled from {prov.get('workdir')} at step {prov['step']})"
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
