r"""Distils a teacher into a mixture student by Di4C.

  python -m launch.distill --config=configs/digits_distill.py --workdir=workdirs/digits_student \
      [--config.teacher.workdir=workdirs/digits_teacher]
"""
from absl import app, flags
from ml_collections import config_flags

from launch import common
from mixture_dd import distill

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Student checkpoints, logs and samples go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.setup(argv)
  distill.distill_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
