r"""Trains a product-denoiser teacher.

  python -m launch.train --config=configs/digits.py --workdir=workdirs/digits_teacher \
      [--config.train.num_steps=500] [--config.data.data_dir=DIR]

Multi-process: add --num_processes=N --process_id=I --coordinator_address=host:port
(see launch/common.py); every process gets the same --workdir.
"""

from absl import flags

from launch import common
from mixture_dd import train

_CONFIG = common.define_config_flag("Teacher config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.setup(argv)
  train.train_teacher(_CONFIG.value, common.check_workdir(_WORKDIR.value))


if __name__ == "__main__":
  common.run(main)
