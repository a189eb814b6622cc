"""Masked-diffusion teacher on scikit-learn's digits (8x8, 17 grey levels).

Sized for a 2-core CPU: about 5 minutes.
  python -m launch.train --config=configs/digits.py --workdir=workdirs/digits_teacher
"""
from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config("digits", levels=17)
  c.process.name = "masked"
  c.process.schedule = "loglinear"
  c.model.update(width=128, depth=4, heads=4, positions="learned")
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.999)
  c.train.update(batch_size=128, num_steps=3000, log_every=100, ckpt_every=500,
                 sample_every=1000, sample_steps=64)
  return c
