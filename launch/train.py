r"""Trains a product-denoiser teacher.

  python -m launch.train --config=configs/digits.py --workdir=workdirs/digits_teacher \
      [--config.train.num_steps=500] [--config.data.data_dir=DIR]
  mdd-train --config=digits:ci --workdir=/tmp/teacher      # installed: from any directory
  mdd-train --config=digits --show_config                   # every field, its value and type

Multi-process: add --num_processes=N --process_id=I --coordinator_address=host:port
(see launch/common.py); every process gets the same --workdir.
"""

from absl import flags

from launch import common
from mixture_dd import teacher_training

_CONFIG = common.define_config_flag("Teacher config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here.")


def main(argv):
  common.setup(argv)
  teacher_training.train_teacher(_CONFIG.value, common.check_workdir(_WORKDIR.value))


def cli(argv=None):
  """The `mdd-train` command (`python -m launch.train`)."""
  return common.run(main, required=("config", "workdir"), argv=argv)


if __name__ == "__main__":
  cli()
