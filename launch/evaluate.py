r"""Evaluates a teacher (and a distilled student) against the number of sampling steps.

  python -m launch.evaluate --teacher_workdir=workdirs/tiny_teacher \
      --student_workdir=workdirs/tiny_student --steps=1,2,4,8 --num_samples=1000 \
      --hybrid_teacher_steps=1 --out_dir=reports/tiny_eval
"""

from absl import flags

from launch import common
from mixture_dd import evaluate, runs

_TEACHER = flags.DEFINE_string("teacher_workdir", None, "Workdir of a launch.train run.")
_STUDENT = flags.DEFINE_string("student_workdir", None, "Workdir of a launch.distill run.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8"], "Numbers of sampling steps N.")
_STUDENT_STEPS = flags.DEFINE_list(
  "student_steps", None, "N for the student and hybrid (default: --steps)."
)
_NUM = flags.DEFINE_integer("num_samples", 2048, "Samples per sampler and N.")
_HYBRID = flags.DEFINE_integer(
  "hybrid_teacher_steps", 0, "M > 0: also the student for N - M steps, then the teacher for M."
)
_BATCH = flags.DEFINE_integer("batch_size", 256, "Sampling batch size.")
_REFERENCE = flags.DEFINE_string(
  "reference_dir",
  None,
  "Cache of the digits classifier / char LM (default under ~/.cache/mixture_dd/reference).",
)
_OUT = flags.DEFINE_string("out_dir", None, "results.json, results.md and plots go here.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["teacher_workdir", "out_dir"])


def main(argv):
  common.setup(argv)
  steps = [int(s) for s in _STEPS.value]
  teacher = runs.load_run(_TEACHER.value)
  student = runs.load_run(_STUDENT.value) if _STUDENT.value else None
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
    student_steps=[int(s) for s in _STUDENT_STEPS.value] if _STUDENT_STEPS.value else None,
  )


if __name__ == "__main__":
  common.run(main)
