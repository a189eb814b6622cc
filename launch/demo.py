r"""The main job: teacher -> Di4C student -> evaluation on the embedded digits.

  python -m launch.demo --workdir=workdirs/demo --out_dir=reports/demo      # see README for time
  python -m launch.demo --scale=ci --workdir=/tmp/d --out_dir=/tmp/r          # seconds (tests)

Each stage resumes from its checkpoints, so a second run reuses the teacher
(and student) of the first and only re-evaluates. A stage stopped by SIGTERM
(preemption) ends the demo with exit status 75 and no report; the same
command then resumes it.
"""

import os
import time

from absl import flags

from launch import common
from mixture_dd import distill, evaluate, runs, teacher_training
from mixture_dd.configs import digits, digits_distill

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "teacher/ and student/ go here.")
_OUT = flags.DEFINE_string("out_dir", "reports/demo", "The report folder.")
_SCALE = flags.DEFINE_enum("scale", "full", ["full", "ci"], "ci: a seconds-long smoke run.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8", "16"], "Teacher's sampling steps N.")
_STUDENT_STEPS = flags.DEFINE_list(
  "student_steps",
  ["1", "2", "4", "8"],
  "Student's sampling steps N (against the teacher at N, 2N).",
)
_NUM = flags.DEFINE_integer(
  "num_samples",
  2048,
  "Samples per sampler and N (FD's standard error is about 0.5-1 at "
  "2048; differences of 3 are noise at 256).",
  lower_bound=1,
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS cache (default ~/.cache/mixture_dd/tfds).")


def main(argv):
  common.setup(argv)
  steps = common.int_list(_STEPS.value, "steps")
  student_steps = common.int_list(_STUDENT_STEPS.value, "student_steps")
  common.check_workdir(_WORKDIR.value)
  common.check_writable_dir(_OUT.value, "--out_dir")
  t0 = time.time()
  teacher_dir = os.path.join(_WORKDIR.value, "teacher")
  student_dir = os.path.join(_WORKDIR.value, "student")
  tconf = digits.get_config(_SCALE.value)
  dconf = digits_distill.get_config(_SCALE.value)
  dconf.teacher.workdir = teacher_dir
  if _DATA_DIR.value:
    tconf.data.data_dir = _DATA_DIR.value
    dconf.data.data_dir = _DATA_DIR.value
  print(f"[1/3] teacher -> {teacher_dir}", flush=True)
  teacher_training.train_teacher(tconf, teacher_dir)
  print(f"[2/3] Di4C student -> {student_dir} ({time.time() - t0:.0f} s so far)", flush=True)
  distill.distill_student(dconf, student_dir)
  print(f"[3/3] evaluation -> {_OUT.value} ({time.time() - t0:.0f} s so far)", flush=True)
  num = _NUM.value if _SCALE.value == "full" else min(_NUM.value, 32)
  evaluate.evaluate(
    runs.load_run(teacher_dir),
    runs.load_run(student_dir),
    steps,
    num,
    seed=0,
    out_dir=_OUT.value,
    batch_size=min(256, num),
    student_steps=student_steps,
  )
  print(open(os.path.join(_OUT.value, "results.md")).read())
  print(f"done in {time.time() - t0:.0f} s; report in {_OUT.value}")


def cli(argv=None):
  """The `mdd-demo` command (`python -m launch.demo`)."""
  return common.run(main, argv=argv)


if __name__ == "__main__":
  cli()
