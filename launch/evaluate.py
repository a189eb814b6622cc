r"""Evaluates a teacher (and a distilled student) against the number of sampling steps.

  python -m launch.evaluate --teacher_workdir=workdirs/tiny_teacher \
      --student_workdir=workdirs/tiny_student --steps=1,2,4,8 --num_samples=1000 \
      --hybrid_teacher_steps=1 --out_dir=reports/tiny_eval

Every flag is checked before anything is loaded or written (runs that
exist, an --out_dir that can be written, positive numbers); the last line
printed names the report's folder and files.
"""

import os

from absl import flags

from launch import common
from mixture_dd import evaluate, runs

_TEACHER = flags.DEFINE_string(
  "teacher_workdir",
  None,
  "Workdir of a launch.train run (default: the teacher --student_workdir records, e.g. the "
  "exact teacher of configs/markov_exact_distill.py).",
)
_STUDENT = flags.DEFINE_string("student_workdir", None, "Workdir of a launch.distill run.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8"], "Numbers of sampling steps N.")
_STUDENT_STEPS = flags.DEFINE_list(
  "student_steps", None, "N for the student and hybrid (default: --steps)."
)
_NUM = flags.DEFINE_integer("num_samples", 2048, "Samples per sampler and N.", lower_bound=1)
_HYBRID = flags.DEFINE_integer(
  "hybrid_teacher_steps",
  0,
  "M > 0: also the student for N - M steps, then the teacher for M.",
  lower_bound=0,
)
_BATCH = flags.DEFINE_integer("batch_size", 256, "Sampling batch size.", lower_bound=1)
_REFERENCE = flags.DEFINE_string(
  "reference_dir",
  None,
  "Cache of the digits classifier / char LM (default under ~/.cache/mixture_dd/reference).",
)
_OUT = flags.DEFINE_string("out_dir", None, "results.json, results.md and plots go here.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_TEMPERATURES = flags.DEFINE_list(
  "teacher_temperatures",
  [],
  "Also sample the teacher at these temperatures (e.g. 0.8,0.9,1.0,1.1,1.2) at the largest "
  "--steps: a quality-against-entropy frontier with the student's points on it (frontier.png).",
)


def main(argv):
  common.setup(argv)
  steps = common.int_list(_STEPS.value, "steps")
  student_steps = (
    common.int_list(_STUDENT_STEPS.value, "student_steps") if _STUDENT_STEPS.value else None
  )
  if _HYBRID.value and not _STUDENT.value:
    raise common.UsageError(
      "--hybrid_teacher_steps > 0 needs --student_workdir (the hybrid's student)"
    )
  try:
    temperatures = [float(t) for t in _TEMPERATURES.value]
  except ValueError:
    raise common.UsageError(
      f"--teacher_temperatures={','.join(_TEMPERATURES.value)}: give numbers, e.g. 0.9,1.0,1.1"
    ) from None
  if not (_TEACHER.value or _STUDENT.value):
    raise common.UsageError(
      "give --teacher_workdir, --student_workdir or both (a student alone is evaluated "
      "against the teacher it records)"
    )
  if _TEACHER.value:
    common.check_run(_TEACHER.value, "--teacher_workdir")
  if _STUDENT.value:
    common.check_run(_STUDENT.value, "--student_workdir")
  out_dir = common.check_writable_dir(_OUT.value, "--out_dir")
  student = runs.load_run(_STUDENT.value) if _STUDENT.value else None
  teacher = runs.load_run(_TEACHER.value) if _TEACHER.value else runs.teacher_run(student)
  evaluate.evaluate(
    teacher,
    student,
    steps,
    _NUM.value,
    _SEED.value,
    _OUT.value,
    hybrid_teacher_steps=_HYBRID.value,
    reference_dir=_REFERENCE.value,
    batch_size=_BATCH.value,
    student_steps=student_steps,
    teacher_temperatures=temperatures,
  )
  files = sorted(f for f in os.listdir(out_dir) if os.path.isfile(os.path.join(out_dir, f)))
  print(f"wrote the report to {out_dir}: {', '.join(files)}")


def cli(argv=None):
  """The `mdd-evaluate` command (`python -m launch.evaluate`)."""
  return common.run(main, required=("out_dir",), argv=argv)


if __name__ == "__main__":
  cli()
