r"""Distils a teacher into a mixture student by Di4C.

  python -m launch.distill --config=configs/tiny_distill.py --workdir=workdirs/tiny_student \
      [--config.teacher.workdir=workdirs/some_teacher] [--config.data.data_dir=DIR]

Multi-process: add --num_processes=N --process_id=I --coordinator_address=host:port
(see launch/common.py); every process gets the same --workdir.
"""

from absl import flags

from launch import common
from mixture_dd import distill

_CONFIG = common.define_config_flag("Distillation config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Student checkpoints, logs and samples go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.setup(argv)
  distill.distill_student(_CONFIG.value, common.check_workdir(_WORKDIR.value))


if __name__ == "__main__":
  common.run(main)
