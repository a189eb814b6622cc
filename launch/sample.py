r"""Draws samples from a teacher, a student, or a hybrid of the two.

  python -m launch.sample --workdir=workdirs/demo/student --steps=4 --num_samples=64 \
      --out=reports/samples/student_N4
  # hybrid: the student, then the teacher for the last --second_steps steps:
  python -m launch.sample --workdir=workdirs/demo/student --second_workdir=workdirs/demo/teacher \
      --steps=8 --second_steps=2 --out=reports/samples/hybrid_N8
  # MaskGIT confidence sampler with classifier-free guidance (class-conditional runs):
  python -m launch.sample --workdir=... --sampler=confidence --label=3 --guidance=2.0 --steps=4 ...
Writes OUT.npz plus OUT.png (images) or OUT.txt (text). The runs and OUT's
directory are checked before anything is sampled.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from launch import common
from mixture_dd import runs, samplers, visualize

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch.train or launch.distill workdir.")
_SECOND = flags.DEFINE_string("second_workdir", None, "Hybrid: this run takes the last steps.")
_SECOND_STEPS = flags.DEFINE_integer(
  "second_steps", None, "Hybrid: the last steps, taken by --second_workdir's run."
)
_STEPS = flags.DEFINE_integer("steps", 8, "Number of sampling steps N.", lower_bound=1)
_NUM = flags.DEFINE_integer("num_samples", 64, "How many samples.", lower_bound=1)
_SAMPLER = flags.DEFINE_enum(
  "sampler",
  "analytic",
  ["analytic", "confidence"],
  "analytic x0 sampler or MaskGIT's confidence sampler.",
)
_GRID = flags.DEFINE_enum(
  "grid", "uniform", list(samplers.GRIDS), "Time grid of the analytic sampler."
)
_FINAL = flags.DEFINE_enum("final", "argmax", list(samplers.FINALS), "Last denoise at t_min.")
_LABEL = flags.DEFINE_integer("label", None, "Class label for class-conditional runs.")
_GUIDANCE = flags.DEFINE_float("guidance", 0.0, "Classifier-free guidance scale w (0 = off).")
_TEMP = flags.DEFINE_float("choice_temperature", 4.5, "Confidence sampler's Gumbel scale.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", None, "Output prefix (OUT.npz, OUT.png / OUT.txt).")


def main(argv):
  common.setup(argv)
  common.check_run(_WORKDIR.value, "--workdir")
  if _SECOND.value:
    if _SAMPLER.value == "confidence":
      raise common.UsageError("--second_workdir (hybrid) works with --sampler=analytic only")
    if _SECOND_STEPS.value is None:
      raise common.UsageError(
        "--second_workdir needs --second_steps (the last steps, taken by --second_workdir's run)"
      )
    common.check_run(_SECOND.value, "--second_workdir")
  if _GUIDANCE.value and _LABEL.value is None:
    raise common.UsageError("--guidance needs --label")
  out = common.check_out_prefix(_OUT.value)
  run = runs.load_run(_WORKDIR.value)
  labels = None
  if _LABEL.value is not None:
    if not run.model.num_classes:
      raise ValueError(f"--label given but {_WORKDIR.value} is not class-conditional")
    if not 0 <= _LABEL.value < run.model.num_classes:
      raise ValueError(f"--label must be in [0, {run.model.num_classes}), got {_LABEL.value}")
    labels = jnp.full((_NUM.value,), _LABEL.value, jnp.int32)
  den = run.denoiser(labels)
  uncond = None
  if _GUIDANCE.value:
    uncond = run.denoiser(jnp.full((_NUM.value,), run.model.num_classes, jnp.int32))
    if _SAMPLER.value == "analytic":  # the confidence sampler ramps the scale itself
      den = samplers.guided(den, uncond, _GUIDANCE.value)
  key = jax.random.key(_SEED.value)
  t0 = time.time()
  if _SAMPLER.value == "confidence":
    x = samplers.confidence_sample(
      key,
      run.process,
      den,
      run.params,
      _NUM.value,
      run.spec.length,
      _STEPS.value,
      _TEMP.value,
      uncond=uncond,
      guidance=_GUIDANCE.value,
    )
  else:
    hybrid = {}
    if _SECOND.value:
      second = runs.load_run(_SECOND.value)
      hybrid = dict(
        second=second.denoiser(labels),
        second_params=second.params,
        second_steps=_SECOND_STEPS.value,
      )
    x = samplers.sample(
      key,
      run.process,
      den,
      run.params,
      _NUM.value,
      run.spec.length,
      _STEPS.value,
      grid=_GRID.value,
      final=_FINAL.value,
      **hybrid,
    )
  x = np.asarray(x)
  print(f"{_NUM.value} samples in {time.time() - t0:.2f} s (incl. compile)")
  for path in visualize.save_samples(x, run.spec, out, title=f"N={_STEPS.value}"):
    print("wrote", path)


def cli(argv=None):
  """The `mdd-sample` command (`python -m launch.sample`)."""
  return common.run(main, required=("workdir", "out"), argv=argv)


if __name__ == "__main__":
  cli()
