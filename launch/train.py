r"""Trains a product-denoiser teacher.

  python -m launch.train --config=configs/digits.py --workdir=workdirs/digits_teacher \
      [--config.train.num_steps=500]
"""
from absl import app, flags
from ml_collections import config_flags

from launch import common
from mixture_dd import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Teacher config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and samples go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.setup(argv)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
