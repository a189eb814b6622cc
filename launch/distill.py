r"""Distils a teacher into a mixture student by Di4C.

  python -m launch.distill --config=configs/digits_distill.py --workdir=workdirs/demo/student \
      [--config.teacher.workdir=workdirs/demo/teacher] [--config.data.data_dir=DIR]
  mdd-distill --config=digits_distill:ci --config.teacher.workdir=T --workdir=S   # installed

The first lines logged name the teacher (its workdir, checkpoint step, data
set and process) and the student's data. Multi-process: add --num_processes=N
--process_id=I --coordinator_address=host:port (see launch/common.py); every
process gets the same --workdir.
"""

from absl import flags

from launch import common
from mixture_dd import distill

_CONFIG = common.define_config_flag("Distillation config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Student checkpoints, logs and samples go here.")


def main(argv):
  common.setup(argv)
  distill.distill_student(_CONFIG.value, common.check_workdir(_WORKDIR.value))


def cli(argv=None):
  """The `mdd-distill` command (`python -m launch.distill`)."""
  return common.run(main, required=("config", "workdir"), argv=argv)


if __name__ == "__main__":
  cli()
